import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import { errorMessageOf } from '../util/errors.js';
import { HostError, HostErrorCode } from './errors.js';

/**
 * The tap devices of running VMs' NICs. The agent makes each tap and puts it on its network's
 * bridge before QEMU starts (QEMU only opens it: `-netdev tap,ifname=...,script=no`), and deletes
 * it once QEMU has exited. A tap's name comes from the VM's name and the NIC's index, so an agent
 * that restarts finds the taps of the QEMU processes it takes back.
 */
const run = promisify(execFile);
const IP_TIMEOUT_MS = 10_000;

/** `fy` + 10 hex digits of the VM name's hash + the NIC index: at most 15 bytes, as Linux wants. */
export function tapName(vm: string, index: number): string {
  return `fy${createHash('sha256').update(vm).digest('hex').slice(0, 10)}n${index}`;
}

/** Creates tap `name` (or takes over one a crash left) on `bridge`, up. */
export async function createTap(name: string, bridge: string): Promise<void> {
  await deleteTap(name);
  try {
    await ip(['tuntap', 'add', 'dev', name, 'mode', 'tap']);
    await ip(['link', 'set', 'dev', name, 'master', bridge]);
    await ip(['link', 'set', 'dev', name, 'up']);
  } catch (error) {
    await deleteTap(name);
    throw new HostError(
      HostErrorCode.BadVmConfig,
      `could not put a tap for the VM on bridge ${bridge}: ${errorMessageOf(error)}`,
      { cause: error },
    );
  }
}

/** Deletes tap `name`; one that is not there is fine. */
export async function deleteTap(name: string): Promise<void> {
  await ip(['link', 'del', 'dev', name]).catch(() => undefined);
}

async function ip(args: readonly string[]): Promise<void> {
  try {
    await run('ip', args, { timeout: IP_TIMEOUT_MS });
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new Error(`ip ${args.join(' ')}: ${stderr || errorMessageOf(error)}`);
  }
}
