import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import type { GuestImage } from './guest-image.js';

/**
 * QEMU running the test guest under TCG, its console going to a file. The log file is
 * truncated when QEMU opens it (chardev `file` without `append=on`), so a migration
 * destination needs a log file of its own; guest-log.ts reads the two concatenated.
 */
export interface GuestOptions {
  readonly image: GuestImage;
  /** Serial console log file. */
  readonly logPath: string;
  /** `-drive` value for the guest's /dev/vda, e.g. `file=disk.raw,format=raw,if=virtio`. */
  readonly drive?: string;
  /** `ferry.*` knobs for init.sh, e.g. `{ guest: 'writer', blocks: 4096 }`. */
  readonly knobs?: Readonly<Record<string, string | number>>;
  /** More QEMU arguments (`-incoming`, `-qmp`, ...). */
  readonly extraArgs?: readonly string[];
}

export function guestQemuArgs(options: GuestOptions): string[] {
  const knobs = Object.entries(options.knobs ?? {}).map(([key, value]) => `ferry.${key}=${value}`);
  return [
    ...['-machine', 'q35', '-accel', 'tcg', '-m', '256M', '-smp', '1'],
    ...['-nodefaults', '-display', 'none', '-no-reboot'],
    ...['-kernel', options.image.kernel, '-initrd', options.image.initrd],
    ...['-append', ['console=ttyS0', 'quiet', 'panic=-1', ...knobs].join(' ')],
    ...['-chardev', `file,id=console0,path=${options.logPath}`, '-serial', 'chardev:console0'],
    // A NIC without a host side: the guest brings eth0 up so its state migrates with it.
    ...['-netdev', 'user,id=net0,restrict=on', '-device', 'virtio-net-pci,netdev=net0'],
    ...(options.drive === undefined ? [] : ['-drive', options.drive]),
    ...(options.extraArgs ?? []),
  ];
}

export interface RunningGuest {
  readonly child: ChildProcess;
  readonly logPath: string;
  /** The console log so far. */
  log(): Promise<string>;
  /** Resolves with the log once `done(log)` holds; rejects on timeout or if QEMU exits first. */
  waitFor(done: (log: string) => boolean, timeoutMs: number): Promise<string>;
  /** SIGKILLs QEMU (a crash, as far as the disk is concerned) and waits for it to exit. */
  kill(): Promise<void>;
}

export function startGuest(options: GuestOptions): RunningGuest {
  const child = spawn('qemu-system-x86_64', guestQemuArgs(options), {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const exited = once(child, 'exit');
  const log = () => readFile(options.logPath, 'utf8').catch(() => '');
  return {
    child,
    logPath: options.logPath,
    log,
    async waitFor(done, timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const text = await log();
        if (done(text)) return text;
        if (child.exitCode !== null || child.signalCode !== null) {
          throw new Error(`QEMU exited (${child.exitCode ?? child.signalCode}): ${stderr}`);
        }
        if (Date.now() > deadline) {
          throw new Error(`guest timed out after ${timeoutMs} ms; log ends: ${text.slice(-300)}`);
        }
        // The log is a file QEMU appends to; polling it is the only way to follow it.
        await sleep(50);
      }
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
