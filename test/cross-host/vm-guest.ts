import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { open, readdir, readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { guestImage } from '../guest/guest-image.js';
import { type GuestLog, parseGuestLog, verifyDisk } from '../guest/guest-log.js';
import type { Host } from './netns.js';
import { createHostPair, type HostPair } from './netns.js';
import { type ServedHost, type ServedPair, startServedPair } from './two-serves.js';

/**
 * The test guest (test/guest/) as a Ferry VM on a namespace host, and what the VM-motion tests
 * read of it: its console log followed from the host side, and its MAC announced on a bridge.
 */
export interface VmJson {
  readonly name: string;
  readonly state: string;
  readonly pid: number | null;
  readonly console: string;
  readonly disks: readonly string[];
  readonly nics: readonly { network: string; mac: string }[];
}

/** Makes bridge `bridge` in `host`'s namespace and names it network `bridge` in its agent. */
export async function addBridge(served: ServedHost, bridge: string): Promise<void> {
  for (const args of [
    ['link', 'add', bridge, 'type', 'bridge'],
    ['link', 'set', bridge, 'up'],
  ]) {
    const result = await served.host.exec('ip', args);
    if (result.code !== 0) throw new Error(`ip ${args.join(' ')}: ${result.stderr}`);
  }
  await served.ferryOk(['network', 'add', bridge, '--bridge', bridge]);
}

/**
 * Creates and starts VM `name` on `served`: 256 MiB, TCG, the writer guest on a fresh disk
 * `NAME-os` of `diskMiB`, one NIC on `network`. Resolves once its console shows `minAcks` acks.
 */
export async function startWriterVm(
  served: ServedHost,
  name: string,
  options: {
    network: string;
    diskMiB?: number;
    minAcks?: number;
    blocks?: number;
    /** MiB of memory the guest keeps rewriting (init.sh `ferry.dirty_mib`). */
    dirtyMib?: number;
  },
): Promise<VmJson> {
  const image = await guestImage();
  const append = [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    'ferry.guest=writer',
    `ferry.blocks=${options.blocks ?? 2048}`,
    ...(options.dirtyMib === undefined ? [] : [`ferry.dirty_mib=${options.dirtyMib}`]),
  ].join(' ');
  await served.ferryOk([
    'vm',
    'create',
    name,
    '--disk',
    `${name}-os:${options.diskMiB ?? 32}M`,
    '--memory',
    '256M',
    '--accel',
    'tcg',
    '--kernel',
    image.kernel,
    '--initrd',
    image.initrd,
    '--append',
    append,
    '--nic',
    `network=${options.network}`,
  ]);
  await served.ferryOk(['vm', 'start', name]);
  const vm = await vmOn(served, name);
  await waitFor(async () => (await ackCount(vm.console)) >= (options.minAcks ?? 30), 60_000);
  return vm;
}

export async function vmOn(served: ServedHost, name: string): Promise<VmJson> {
  return JSON.parse(await served.ferryOk(['vm', 'show', name, '--json'])) as VmJson;
}

export async function ackCount(consolePath: string): Promise<number> {
  const text = await readText(consolePath);
  return parseGuestLog(text).lastAcked;
}

async function readText(path: string): Promise<string> {
  try {
    const handle = await open(path, 'r');
    try {
      return (await handle.readFile()).toString('utf8');
    } finally {
      await handle.close();
    }
  } catch {
    return '';
  }
}

/**
 * Follows a console log from the host side through one open descriptor, so it can be read to
 * its end even after the agent deletes the file (the VM's home on the source goes at the end of
 * a move).
 */
export interface ConsoleTail {
  text(): Promise<string>;
  close(): Promise<void>;
}

export async function tailConsole(path: string): Promise<ConsoleTail> {
  const handle = await open(path, 'r');
  return {
    async text() {
      const { size } = await handle.stat();
      const buffer = Buffer.alloc(size);
      await handle.read(buffer, 0, size, 0);
      return buffer.toString('utf8');
    },
    close: () => handle.close(),
  };
}

/**
 * The destination's console log starts with the source's as it was copied with the home; what
 * follows is the destination QEMU's (or, for a move on one host, the same QEMU's after its
 * console was switched). The whole story: the source's full log, then that suffix.
 *
 * Where the suffix starts is where the two part, unless the suffix happens to begin as the
 * source's own continuation did ("ack 10" of "ack 104" and of "ack 105"); and the switch may
 * fall in the middle of a line ("ack 10" in the source, "5 ..." in the destination). So each cut
 * from where they part back to the start of that line is tried, and of those that read as one
 * story without a gap (guest-log.ts), the one that leaves no stray piece of a line is taken.
 */
export function joinConsoles(source: string, destination: string): string {
  let common = 0;
  const limit = Math.min(source.length, destination.length);
  while (common < limit && source.charCodeAt(common) === destination.charCodeAt(common)) {
    common += 1;
  }
  // The source's whole log came over (with the commit): the destination's tells it all, and
  // finishes the line the source may have stopped in the middle of.
  if (common === source.length) return destination;
  const lineStart = destination.lastIndexOf('\n', common - 1) + 1;
  let best: { joined: string; strays: number } | undefined;
  for (let cut = common; cut >= lineStart; cut -= 1) {
    const joined = source + destination.slice(cut);
    const log = parseGuestLog(joined);
    if (log.problems.length > 0 || log.bad.length > 0) continue;
    // A wrong cut leaves a stray piece of a line ("5 104"): the right one leaves the fewest.
    const strays = joined.split('\n').filter((line) => !GUEST_LINE.test(line)).length;
    if (best === undefined || strays < best.strays) best = { joined, strays };
  }
  return best?.joined ?? `${source}\n${destination.slice(lineStart)}`;
}

/** A line the test guest prints (guest-log.ts), or a blank one. */
const GUEST_LINE = /^(ferry-guest|tick|ack|check|bad|error) |^\r?$/;

/** tcpdump on `bridge` in `host`, resolving with the first frame line from `mac`. */
export function watchAnnouncement(
  host: Host,
  bridge: string,
  mac: string,
): { seen: Promise<string>; stop(): void } {
  const child: ChildProcess = host.spawn(
    'tcpdump',
    ['-i', bridge, '-n', '-e', '-l', '-c', '1', 'ether', 'src', mac],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  const seen = new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    lines.once('line', (line) => resolve(line));
    child.once('exit', () =>
      reject(new Error(`tcpdump on ${bridge} ended without a frame from ${mac}`)),
    );
  });
  seen.catch(() => undefined);
  return { seen, stop: () => child.kill('SIGTERM') };
}

export async function waitFor(check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not reached within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

export interface VmJobJson {
  readonly id: string;
  readonly events: readonly { readonly type: string; readonly message: string | null }[];
  readonly state: string;
  readonly phase: string | null;
  readonly error: { code: string; message: string } | null;
  readonly memory: { qemuDowntimeMs: number; storageSwitchoverMs: number; pauseMs: number } | null;
}

export async function jobOn(served: ServedHost, id: string): Promise<VmJobJson> {
  return JSON.parse(await served.ferryOk(['job', 'show', id, '--json'])) as VmJobJson;
}

/** Polls job `id` on `served` until `until` holds for it; resolves with that record. */
export async function waitForJob(
  served: ServedHost,
  id: string,
  until: (job: VmJobJson) => boolean,
  timeoutMs = 120_000,
): Promise<VmJobJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const job = await jobOn(served, id);
    if (until(job)) return job;
    if (Date.now() > deadline) {
      throw new Error(`job ${id} is ${job.state}/${job.phase} after ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

export function isFinished(job: VmJobJson): boolean {
  return FINAL_STATES.has(job.state);
}

/**
 * The live QEMU processes running guest `vm` for `hosts` (every namespace shares the pid space;
 * a QEMU's command line names its agent's data directory): the "exactly one QEMU runs the guest"
 * of the failure tests.
 */
export async function qemuPidsOf(vm: string, hosts: readonly ServedHost[]): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes('qemu-system') || !cmdline.split('\0').includes(`guest=${vm}`)) continue;
    if (!hosts.some((host) => cmdline.includes(`${host.dataDir}/`))) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    if (stat === '' || /\) [ZX] /.test(stat)) continue;
    pids.push(Number(entry));
  }
  return pids;
}

/** Stops VM `name` on `served` and checks every block its guest acknowledged is on its disk. */
export async function stopAndVerify(
  served: ServedHost,
  name: string,
  consoleText: () => Promise<string>,
): Promise<GuestLog> {
  // After a restart the agent may still be finishing an interrupted move of the VM.
  await waitFor(async () => {
    const stopped = await served.ferry(['vm', 'stop', name, '--force']);
    if (stopped.code === 0) return true;
    if (/being taken back/.test(stopped.stderr)) return false;
    if (/is not running/.test(stopped.stderr)) return true;
    throw new Error(`ferry vm stop ${name}: ${stopped.stdout}${stopped.stderr}`);
  }, 60_000);
  const log = parseGuestLog(await consoleText());
  assert.equal(log.bootIds.length, 1, `${name}: one boot, the guest never restarted`);
  assert.deepEqual(log.problems, [], `${name}: acks and counter in sequence`);
  assert.deepEqual(log.bad, [], `${name}: every check the guest made passed`);
  const disk = JSON.parse(await served.ferryOk(['disk', 'show', `${name}-os`, '--json'])) as {
    image: string;
  };
  const image = await open(disk.image, 'r');
  try {
    const wrong = await verifyDisk(async (offset, length) => {
      const buffer = Buffer.alloc(length);
      await image.read(buffer, 0, length, offset);
      return buffer;
    }, log);
    assert.deepEqual(wrong, [], `${name}: every acknowledged block is on its disk`);
  } finally {
    await image.close();
  }
  return log;
}

/** What b holds of VMs and disks (nothing, after a move that failed back). */
export async function holdings(served: ServedHost): Promise<{ vms: number; disks: number }> {
  const vms = JSON.parse(await served.ferryOk(['vm', 'list', '--json'])) as unknown[];
  const disks = JSON.parse(await served.ferryOk(['disk', 'list', '--json'])) as unknown[];
  return { vms: vms.length, disks: disks.length };
}

export async function readWhole(path: string): Promise<string> {
  return readText(path);
}

/**
 * The move of `name` went forward: the guest runs on b in exactly one QEMU, the same boot going
 * on (it acknowledges more writes), a holds neither the VM nor its disks, and every block the
 * guest acknowledged, before and after, is on b's disk. `sourceConsole` is a's console, read to
 * its end (tailConsole) since a deletes it.
 */
export async function assertMovedForward(
  a: ServedHost,
  b: ServedHost,
  name: string,
  sourceConsole: () => Promise<string>,
): Promise<GuestLog> {
  await waitFor(async () => {
    const held = await holdings(a);
    return held.vms === 0 && held.disks === 0;
  }, 120_000);
  const moved = await vmOn(b, name);
  assert.equal(moved.state, 'running', `${name} runs on b`);
  assert.deepEqual(await qemuPidsOf(name, [a, b]), [moved.pid], `exactly one QEMU runs ${name}`);
  const atMove = parseGuestLog(await sourceConsole()).lastAcked;
  await waitFor(async () => (await ackCount(moved.console)) >= atMove + 20, 60_000);
  const whole = async (): Promise<string> =>
    joinConsoles(await sourceConsole(), await readText(moved.console));
  return stopAndVerify(b, name, whole);
}

/**
 * Two namespace hosts running `ferry serve`, peers of each other, with a bridge each — br0 on a,
 * br1 on b, named as networks of the same names — for as long as `body` runs.
 */
export async function withVmHosts(
  body: (served: ServedPair, pair: HostPair) => Promise<void>,
  env: { a?: Record<string, string>; b?: Record<string, string> } = {},
): Promise<void> {
  const pair = await createHostPair();
  try {
    const served = await startServedPair(pair, env);
    await addBridge(served.a, 'br0');
    await addBridge(served.b, 'br1');
    await body(served, pair);
  } finally {
    await pair.dispose();
  }
}

/**
 * The move of `name` failed back: the guest runs on a in the one QEMU it had, goes on writing,
 * b holds nothing, and after a stop every acknowledged block is on a's disk.
 */
export async function assertFailedBack(
  a: ServedHost,
  b: ServedHost,
  name: string,
  pid: number | null,
): Promise<void> {
  const vm = await vmOn(a, name);
  assert.equal(vm.state, 'running', 'the guest runs on a');
  assert.equal(vm.pid, pid, 'in the QEMU it had');
  // b's QEMU goes when b hears of the abort: at once, or once a cut link is back.
  await waitFor(async () => (await qemuPidsOf(name, [a, b])).length === 1, 30_000).catch(() => {});
  assert.deepEqual(await qemuPidsOf(name, [a, b]), [pid], 'exactly one QEMU runs the guest');
  const acked = await ackCount(vm.console);
  await waitFor(async () => (await ackCount(vm.console)) >= acked + 20, 60_000);
  await waitFor(async () => {
    const held = await holdings(b);
    return held.vms === 0 && held.disks === 0;
  }, 30_000);
  await stopAndVerify(a, name, () => readWhole(vm.console));
}

/** A move's memory phase made long (`--speed` caps QEMU's memory stream too), for faults to land in. */
export const SLOW_MEMORY = ['--speed', '2M'];

/** QEMU's memory stream has started (not only the memory phase, whose QEMU is starting). */
export function isSendingMemory(job: VmJobJson): boolean {
  return job.events.some((event) => event.message?.startsWith('memory migration to') === true);
}

/** Starts the move of `name` to b, detached; resolves with the job's id. */
export async function startMove(
  a: ServedHost,
  name: string,
  extra: readonly string[],
): Promise<string> {
  const job = JSON.parse(
    await a.ferryOk([
      'migrate',
      name,
      '--vm',
      '--to-host',
      'b',
      '--network-map',
      'br0=br1',
      '--detach',
      '--json',
      ...extra,
    ]),
  ) as VmJobJson;
  return job.id;
}

/**
 * Starts VM `web` writing on a and its move to b with a long memory phase, runs `fault` once
 * QEMU sends the memory, and resolves with the VM as it was and the job once it ended.
 */
export async function moveWithFault(
  { a }: ServedPair,
  fault: (vm: VmJson, jobId: string) => Promise<void>,
  timeoutMs = 120_000,
): Promise<{ vm: VmJson; job: VmJobJson }> {
  const vm = await startWriterVm(a, 'web', { network: 'br0' });
  const id = await startMove(a, 'web', SLOW_MEMORY);
  await waitForJob(a, id, (job) => isSendingMemory(job) || isFinished(job));
  await fault(vm, id);
  return { vm, job: await waitForJob(a, id, isFinished, timeoutMs) };
}
