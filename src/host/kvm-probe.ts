import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';

/**
 * Whether KVM works on this host well enough to run guests, for `--accel auto`. `/dev/kvm`
 * opening is not enough: under some nested hypervisors KVM starts but cannot give QEMU's default
 * CPU model the features it names, and a Linux guest then hangs early in boot. So QEMU itself is
 * asked: a paused VM with KVM, watched for a moment — one that exits, or warns that the host
 * lacks a requested CPU feature, means TCG.
 */
export interface KvmProbe {
  readonly isUsable: boolean;
  readonly why: string;
}

const PROBE_MS = 1500;
const OUTPUT_MAX_CHARS = 4096;

export async function probeKvm(binary: string): Promise<KvmProbe> {
  const opens = await access('/dev/kvm', constants.R_OK | constants.W_OK).then(
    () => true,
    () => false,
  );
  if (!opens) return { isUsable: false, why: '/dev/kvm cannot be opened' };
  const args = ['-accel', 'kvm', '-machine', 'q35', '-nodefaults', '-display', 'none'];
  const child = spawn(binary, [...args, '-S', '-monitor', 'none', '-serial', 'none'], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let output = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (chunk: string) => {
    output = (output + chunk).slice(0, OUTPUT_MAX_CHARS);
  });
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => resolve(code));
    child.once('error', () => resolve(-1));
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), PROBE_MS);
  const code = await exited;
  clearTimeout(timer);
  const firstLine = output.trim().split('\n')[0] ?? '';
  if (/doesn't support requested feature/.test(output)) {
    return { isUsable: false, why: `KVM lacks CPU features QEMU asks for (${firstLine})` };
  }
  // Killed by our timer: it ran.
  if (code !== null && code !== 0) {
    return { isUsable: false, why: `QEMU cannot start with KVM (${firstLine || `exit ${code}`})` };
  }
  return { isUsable: true, why: 'KVM works' };
}
