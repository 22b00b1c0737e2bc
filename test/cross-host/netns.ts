import {
  type ChildProcess,
  execFile,
  execFileSync,
  type SpawnOptions,
  spawn,
} from 'node:child_process';
import { once } from 'node:events';

/**
 * Two "hosts" for the cross-host tests and benchmark (issue 7): two network namespaces joined by
 * a veth pair, each end with its own address in a private /30, `lo` up in each. The link can be
 * shaped with `tc tbf` (rate only: this kernel has no netem, see delay-relay.ts for delay) and
 * cut with `ip link set down`.
 *
 * Names: namespaces are `ferry-<pid>-<n>-a` and `-b` (pid of the creating process, n counts its
 * pairs), so parallel test files never collide and a leftover of a crashed run is recognised by
 * its dead pid (`cleanupStaleNamespaces`). The veth ends are created directly inside their
 * namespaces (`veth-a` in A, `veth-b` in B), so their names never meet in the root namespace.
 *
 * Cleanup: every pair is recorded until disposed; a process that exits for any reason (a failed
 * assertion, an uncaught error, SIGINT/SIGTERM) kills what runs in its namespaces and deletes
 * them. Only SIGKILL escapes, which is what `cleanupStaleNamespaces` is for. This registry is the
 * one piece of module state: an exit handler has nothing else to reach the pairs through.
 *
 * Traffic stays inside: nothing here routes a namespace to the root namespace or beyond, so a
 * test can only reach loopback or the two addresses of its own pair.
 */

export const NETNS_PREFIX = 'ferry-';
const NAME_PATTERN = /^ferry-(\d+)-(\d+)-[ab]$/;
const IP_TIMEOUT_MS = 10_000;
const EXEC_TIMEOUT_MS = 30_000;
const STOP_GRACE_MS = 2_000;
const OUTPUT_BYTES_MAX = 16 * 1024 * 1024;

export interface ExecResult {
  /** The exit status; a command killed by a signal or the time limit reports -1. */
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ExecOptions {
  /** SIGKILL after this long (default 30 s); the result then has code -1. */
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
}

/** One end of the pair: a namespace, its address on the veth, and ways to run things in it. */
export interface Host {
  /** The namespace's name, for `ip netns exec`. */
  readonly ns: string;
  /** This end's IPv4 address on the veth. */
  readonly ip: string;
  /** This end's veth device (inside `ns`). */
  readonly device: string;
  /** Runs `cmd args...` inside the namespace to completion; never rejects for a non-zero exit. */
  exec(cmd: string, args: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  /**
   * Starts `cmd args...` inside the namespace (`ip netns exec` execs it, so the child's pid is
   * the command's own). The pair's dispose kills it, and anything else left in the namespace.
   */
  spawn(cmd: string, args: readonly string[], options?: SpawnOptions): ChildProcess;
}

export type LinkEnd = 'a' | 'b' | 'both';

export interface HostPair {
  readonly a: Host;
  readonly b: Host;
  /** The pair's prefix length (30). */
  readonly prefixLength: number;
  /**
   * Shapes both directions with `tc tbf` at `mbit` Mbit/s (10^6 bit/s) on both veth ends, or
   * removes the shaping with null. See `tbfParameters` for burst and latency.
   */
  setRate(mbit: number | null): Promise<void>;
  /**
   * `ip link set <veth> down` on the chosen end(s), default both. With both ends down each side's
   * connected route is gone: new connections fail at once (ENETUNREACH) and established ones
   * retransmit into nothing until restored or timed out. With one end down, that side fails
   * fast and the other side's packets vanish silently (a black hole from its view).
   */
  cutLink(end?: LinkEnd): Promise<void>;
  /** Brings the veth end(s) back up; the kernel restores the connected routes. */
  restoreLink(end?: LinkEnd): Promise<void>;
  /**
   * Stops every process spawned in the namespaces (SIGTERM, SIGKILL after 2 s), kills anything
   * else still inside them, and deletes both namespaces (the veth goes with them). Idempotent.
   */
  dispose(): Promise<void>;
}

export interface HostPairOptions {
  /** MTU of both veth ends (default: the kernel's, 1500). */
  readonly mtu?: number;
}

interface PairRecord {
  readonly names: readonly [string, string];
  readonly children: Set<ChildProcess>;
}

const livePairs = new Set<PairRecord>();
let pairCount = 0;
let isExitHookInstalled = false;

/**
 * Creates two namespaces joined by a veth pair with addresses in a /30 of 10.213.0.0/16 chosen
 * from the pid and the pair's number (unique within a process and, for pids that differ modulo
 * 1024, across processes; a clash could not leak anyway, each namespace routes on its own).
 * Needs root; on any failure the partial pair is removed before the error is thrown. The first
 * call in a process also removes what crashed runs left (`cleanupStaleNamespaces`).
 */
export async function createHostPair(options: HostPairOptions = {}): Promise<HostPair> {
  if (!isExitHookInstalled) cleanupStaleNamespaces();
  installExitHook();
  const n = pairCount;
  pairCount += 1;
  const names = [`ferry-${process.pid}-${n}-a`, `ferry-${process.pid}-${n}-b`] as const;
  const record: PairRecord = { names, children: new Set() };
  livePairs.add(record);
  const [ipA, ipB] = pairAddresses(process.pid, n);
  const devices = ['veth-a', 'veth-b'] as const;
  try {
    for (const ns of names) await ip(['netns', 'add', ns]);
    await ip([
      'link',
      'add',
      devices[0],
      'netns',
      names[0],
      'type',
      'veth',
      'peer',
      'name',
      devices[1],
      'netns',
      names[1],
    ]);
    for (const [i, ns] of names.entries()) {
      const device = devices[i] ?? '';
      const address = i === 0 ? ipA : ipB;
      await ip(['-n', ns, 'addr', 'add', `${address}/30`, 'dev', device]);
      if (options.mtu !== undefined) {
        await ip(['-n', ns, 'link', 'set', device, 'mtu', String(options.mtu)]);
      }
      await ip(['-n', ns, 'link', 'set', device, 'up']);
      await ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    }
  } catch (error) {
    await disposeRecord(record);
    throw error;
  }
  const a = makeHost(names[0], ipA, devices[0], record);
  const b = makeHost(names[1], ipB, devices[1], record);
  const ends = (end: LinkEnd): Host[] => (end === 'both' ? [a, b] : end === 'a' ? [a] : [b]);
  return {
    a,
    b,
    prefixLength: 30,
    setRate: async (mbit) => {
      for (const host of [a, b]) await shapeDevice(host, mbit);
    },
    cutLink: async (end = 'both') => {
      for (const host of ends(end)) await ip(['-n', host.ns, 'link', 'set', host.device, 'down']);
    },
    restoreLink: async (end = 'both') => {
      for (const host of ends(end)) await ip(['-n', host.ns, 'link', 'set', host.device, 'up']);
    },
    dispose: () => disposeRecord(record),
  };
}

/** The two addresses of pair `n` of process `pid`: 10.213.X.Y+1 and +2 of a /30. */
export function pairAddresses(pid: number, n: number): [string, string] {
  const index = (pid % 1024) * 16 + (n % 16);
  const third = index >> 6;
  const base = (index & 63) * 4;
  return [`10.213.${third}.${base + 1}`, `10.213.${third}.${base + 2}`];
}

export interface TbfParameters {
  /** Bytes the bucket holds: the largest burst sent at line speed. */
  readonly burstBytes: number;
  /** How long a packet may wait in the queue before tbf drops it (sets the queue's length). */
  readonly latencyMs: number;
}

const KERNEL_HZ = 250;
const BURST_BYTES_MIN = 64 * 1024;
const TBF_LATENCY_MS = 20;

/**
 * tbf's burst and latency for a rate. Burst: at least rate / HZ (the classic rule, so a timer
 * tick's worth of tokens fits: 500 KB at 1 Gbit with this kernel's HZ of 250) and at least 64 KiB
 * (a whole GSO packet from the veth, which tbf would otherwise have to split): 64 KiB at 100
 * Mbit, 500 KB at 1 Gbit. A burst that small against a 4 GiB copy lets the link exceed its rate
 * by well under 0.1%. Latency 20 ms: the queue holds rate × 20 ms (250 KB at 100 Mbit, 2.5 MB
 * at 1 Gbit), several times the bandwidth-delay product of a 2 ms + 2 ms relay, so TCP is not
 * starved by tail drops, while a queue that is full adds at most 20 ms.
 */
export function tbfParameters(mbit: number): TbfParameters {
  const bytesPerSecond = (mbit * 1_000_000) / 8;
  return {
    burstBytes: Math.max(BURST_BYTES_MIN, Math.ceil(bytesPerSecond / KERNEL_HZ)),
    latencyMs: TBF_LATENCY_MS,
  };
}

async function shapeDevice(host: Host, mbit: number | null): Promise<void> {
  if (mbit === null) {
    // Deleting the root qdisc restores the veth default (noqueue); "no qdisc" is fine too.
    await host.exec('tc', ['qdisc', 'del', 'dev', host.device, 'root'], {
      timeoutMs: IP_TIMEOUT_MS,
    });
    return;
  }
  if (!(mbit > 0)) throw new Error(`setRate: ${mbit} Mbit/s is not a rate`);
  const { burstBytes, latencyMs } = tbfParameters(mbit);
  const args = ['qdisc', 'replace', 'dev', host.device, 'root', 'tbf', 'rate', `${mbit}mbit`];
  args.push('burst', String(burstBytes), 'latency', `${latencyMs}ms`);
  const result = await host.exec('tc', args, { timeoutMs: IP_TIMEOUT_MS });
  if (result.code !== 0) throw new Error(`tc ${args.join(' ')} in ${host.ns}: ${result.stderr}`);
}

function makeHost(ns: string, address: string, device: string, record: PairRecord): Host {
  return {
    ns,
    ip: address,
    device,
    exec: (cmd, args, options = {}) => execIn(ns, cmd, args, options),
    spawn: (cmd, args, options = {}) => {
      const child = spawn('ip', ['netns', 'exec', ns, cmd, ...args], options);
      record.children.add(child);
      child.once('exit', () => record.children.delete(child));
      return child;
    },
  };
}

function execIn(
  ns: string,
  cmd: string,
  args: readonly string[],
  options: ExecOptions,
): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(
      'ip',
      ['netns', 'exec', ns, cmd, ...args],
      {
        timeout: options.timeoutMs ?? EXEC_TIMEOUT_MS,
        killSignal: 'SIGKILL',
        maxBuffer: OUTPUT_BYTES_MAX,
        encoding: 'utf8',
        ...(options.env === undefined ? {} : { env: options.env }),
        ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      },
      (error, stdout, stderr) => {
        if (error === null) return resolve({ code: 0, stdout, stderr });
        const code = typeof error.code === 'number' && error.signal == null ? error.code : -1;
        resolve({ code, stdout, stderr: stderr === '' ? error.message : stderr });
      },
    );
  });
}

/** Runs `ip args...` in the root namespace; rejects with its stderr on failure. */
function ip(args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, { timeout: IP_TIMEOUT_MS, encoding: 'utf8' }, (error, _out, stderr) => {
      if (error === null) resolve();
      else reject(new Error(`ip ${args.join(' ')}: ${stderr.trim() || error.message}`));
    });
  });
}

async function disposeRecord(record: PairRecord): Promise<void> {
  if (!livePairs.delete(record)) return;
  const children = [...record.children];
  for (const child of children) child.kill('SIGTERM');
  await Promise.all(
    children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS);
      await once(child, 'exit');
      clearTimeout(timer);
    }),
  );
  removeNamespacesSync(record.names);
}

/**
 * Kills every process left in each namespace (grandchildren included: `ip netns pids` finds
 * them by their namespace) and deletes it. Synchronous, so the exit hook can use it.
 */
function removeNamespacesSync(names: readonly string[]): void {
  const existing = new Set(listNamespacesSync());
  for (const ns of names) {
    if (!existing.has(ns)) continue;
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const pids = pidsInSync(ns);
      if (pids.length === 0) break;
      for (const pid of pids) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // Gone already: the next listing will not show it.
        }
      }
      execFileSync('sleep', ['0.05']);
    }
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: IP_TIMEOUT_MS });
    } catch (error) {
      process.stderr.write(`netns: could not delete ${ns}: ${String(error)}\n`);
    }
  }
}

function pidsInSync(ns: string): number[] {
  try {
    const text = execFileSync('ip', ['netns', 'pids', ns], {
      encoding: 'utf8',
      timeout: IP_TIMEOUT_MS,
    });
    return text
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map(Number)
      .filter((pid) => Number.isSafeInteger(pid) && pid !== process.pid);
  } catch {
    // The namespace is gone (or was never fully made): nothing runs in it.
    return [];
  }
}

/** The names `ip netns list` shows (the first word of each line). */
export function listNamespacesSync(): string[] {
  try {
    const text = execFileSync('ip', ['netns', 'list'], {
      encoding: 'utf8',
      timeout: IP_TIMEOUT_MS,
    });
    return text
      .split('\n')
      .map((line) => line.split(' ')[0] ?? '')
      .filter((name) => name !== '');
  } catch {
    return [];
  }
}

/** The namespaces this process made and has not disposed yet. */
export function liveNamespaces(): string[] {
  return [...livePairs].flatMap((record) => [...record.names]);
}

/**
 * Removes namespaces left by earlier runs that died without cleaning up (SIGKILL): names of
 * ours whose creating pid no longer runs. Namespaces of running processes are left alone.
 * Returns the names removed.
 */
export function cleanupStaleNamespaces(): string[] {
  const stale = listNamespacesSync().filter((name) => {
    const match = NAME_PATTERN.exec(name);
    return match !== null && !isPidAlive(Number(match[1]));
  });
  removeNamespacesSync(stale);
  return stale;
}

function isPidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it runs, under someone else.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let availability: { readonly isAvailable: boolean; readonly reason: string } | undefined;

/**
 * Whether this process can make namespaces: root, `ip` present, and `ip netns add` works (a
 * container may forbid it). Probed once and remembered; `netnsUnavailableReason` says why not.
 */
export function isNetnsAvailable(): boolean {
  availability ??= probeNetns();
  return availability.isAvailable;
}

export function netnsUnavailableReason(): string {
  availability ??= probeNetns();
  return availability.reason;
}

function probeNetns(): { isAvailable: boolean; reason: string } {
  if (process.getuid?.() !== 0) {
    return { isAvailable: false, reason: 'network namespaces need root' };
  }
  const probe = `ferry-${process.pid}-probe`;
  try {
    execFileSync('ip', ['netns', 'add', probe], { stdio: 'pipe', timeout: IP_TIMEOUT_MS });
  } catch (error) {
    const detail = (error as { stderr?: Buffer }).stderr?.toString().trim() ?? String(error);
    return { isAvailable: false, reason: `ip netns add failed: ${detail}` };
  }
  try {
    execFileSync('ip', ['netns', 'del', probe], { stdio: 'ignore', timeout: IP_TIMEOUT_MS });
  } catch {
    // Left over: cleanupStaleNamespaces does not match it, so say so rather than hide it.
    process.stderr.write(`netns: could not delete probe namespace ${probe}\n`);
  }
  return { isAvailable: true, reason: '' };
}

/**
 * Disposes every live pair when the process exits. On SIGINT/SIGTERM it cleans up and, when no
 * one else handles the signal, re-raises it so the process still dies of it.
 */
function installExitHook(): void {
  if (isExitHookInstalled) return;
  isExitHookInstalled = true;
  const disposeAllSync = (): void => {
    for (const record of livePairs) {
      for (const child of record.children) child.kill('SIGKILL');
      removeNamespacesSync(record.names);
    }
    livePairs.clear();
  };
  process.once('exit', disposeAllSync);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = (): void => {
      disposeAllSync();
      if (process.listenerCount(signal) === 1) {
        process.removeListener(signal, onSignal);
        process.kill(process.pid, signal);
      }
    };
    process.on(signal, onSignal);
  }
}
