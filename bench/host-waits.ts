import { close, fstat, open, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import {
  createHistogram,
  type EventLoopUtilization,
  type IntervalHistogram,
  monitorEventLoopDelay,
  performance,
  type RecordableHistogram,
} from 'node:perf_hooks';

/**
 * Where the guest waits inside Ferry's process (issue 9 item 2), measured in the agent host while
 * the benchmark's guest runs, over one window at a time:
 *
 * - the event loop: `monitorEventLoopDelay`, how late a timer due every `LOOP_RESOLUTION_MS`
 *   fires (what its intervals exceed the resolution by), i.e. how long a ready callback (an NBD request read, a write's completion, a reply)
 *   waits for the loop;
 * - the libuv thread pool: a probe job every `PROBE_INTERVAL_MS`, `fstat` on an open file (a few
 *   µs of work), timed from submission to its callback: the time it queued behind other pool
 *   jobs (the guest's writes, the copier's chunks), plus the loop's delay in running the callback;
 *   one probe in flight at a time, so it never adds more than one job to the queue;
 * - the range lock: the mirror's own counts (MirrorStats), read once the move is over;
 * - how busy the loop was: `eventLoopUtilization`, the share of the window spent in callbacks;
 * - the CPUs: this process's CPU time over the window (in cores), and how busy the machine's
 *   CPUs were (every process: fio, the kernel's copy, other work on the machine), since a wait
 *   for a CPU shows up in each of the above.
 */

/** A distribution of waits, in ms; all zero when nothing was sampled. */
export interface Distribution {
  readonly count: number;
  readonly meanMs: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly maxMs: number;
}

export interface WaitWindow {
  readonly durationMs: number;
  readonly loopDelay: Distribution;
  readonly poolProbe: Distribution;
  /** The share of the window the event loop was running callbacks, not waiting for events. */
  readonly loopUtilization: number;
  /**
   * The loop thread's own CPU time per wall-clock time (Linux, /proc; NaN elsewhere): below
   * `loopUtilization`, the loop was busy without a CPU (waiting for one).
   */
  readonly loopThreadCores: number;
  /** This process's user and system CPU time over the window, per wall-clock time: cores used. */
  readonly processCores: number;
  /** The machine's CPUs, busy (not idle) over the window: 0..1. */
  readonly machineBusy: number;
}

/** The guest's side of a method's range lock (MirrorStats). */
export interface LockWaitTotals {
  readonly acquires: number;
  readonly waits: number;
  readonly waitMs: number;
}

/** What the agent host measured around one move. */
export interface HostWaits {
  /** The guest's load alone, just before the move (null: none asked for). */
  readonly before: WaitWindow | null;
  /** From the move's request to its end, switchover included. */
  readonly during: WaitWindow;
  /** Null for a method that takes no range lock (dbt without hand-over, snapshot). */
  readonly lock: LockWaitTotals | null;
  /**
   * The guest's data requests below the migration's Switch (the method's filter and what is
   * under it: lock, mirrored writes, the file writes), and their mean latency, during the move.
   */
  readonly guestInStack: MeanLatency;
  /**
   * The guest's writes to the source file (the disk's Stats filter, right above it: one pool
   * job each, plus the loop to run its callback), over `before` and from the move's start to its
   * switchover.
   */
  readonly sourceWrite: { readonly before: MeanLatency | null; readonly during: MeanLatency };
  /**
   * The migration's requests to the target file during the move (the mirrored writes; the
   * copier's too when the kernel does not copy for it).
   */
  readonly targetRequests: MeanLatency;
}

export interface MeanLatency {
  readonly operations: number;
  readonly meanMs: number;
}

/** Cumulative counts of requests and their summed latencies (a Stats verb's, a LatencyMeter's). */
export interface LatencyCount {
  readonly operations: number;
  readonly latencySumUs: number;
}

/** The mean latency of the requests between two cumulative counts. */
export function meanBetween(from: LatencyCount, to: LatencyCount): MeanLatency {
  const operations = to.operations - from.operations;
  const sumUs = to.latencySumUs - from.latencySumUs;
  return { operations, meanMs: operations > 0 ? sumUs / operations / 1000 : 0 };
}

const LOOP_RESOLUTION_MS = 5;
const PROBE_INTERVAL_MS = 5;
const NS_PER_MS = 1e6;

export class WaitProbes {
  private readonly fd: number;
  private readonly loop: IntervalHistogram;
  private readonly pool: RecordableHistogram;
  private timer: NodeJS.Timeout | undefined;
  private startMs = 0;
  private startCpu: NodeJS.CpuUsage = { user: 0, system: 0 };
  private startTimes: CpuTimes = { busyMs: 0, totalMs: 0 };
  private startLoop: EventLoopUtilization = performance.eventLoopUtilization();
  private startLoopThreadMs = 0;
  private isRunning = false;
  /** Counts windows, so a probe of an earlier window that completes late is dropped. */
  private window = 0;

  private constructor(fd: number) {
    this.fd = fd;
    this.loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    this.pool = createHistogram();
  }

  /** Opens `path` (any file) for the pool probe's `fstat`. */
  static async open(path: string): Promise<WaitProbes> {
    const fd = await new Promise<number>((resolve, reject) =>
      open(path, 'r', (error, opened) => (error === null ? resolve(opened) : reject(error))),
    );
    return new WaitProbes(fd);
  }

  /** Starts a window: both probes from zero. */
  start(): void {
    if (this.isRunning) throw new Error('wait probes: a window is open already');
    this.isRunning = true;
    this.window += 1;
    this.loop.reset();
    this.pool.reset();
    this.loop.enable();
    this.startMs = performance.now();
    this.startCpu = process.cpuUsage();
    this.startTimes = machineTimes();
    this.startLoop = performance.eventLoopUtilization();
    this.startLoopThreadMs = loopThreadCpuMs();
    this.probe();
  }

  /** Ends the window and summarises it. */
  stop(): WaitWindow {
    if (!this.isRunning) throw new Error('wait probes: no window is open');
    this.isRunning = false;
    clearTimeout(this.timer);
    this.loop.disable();
    const durationMs = performance.now() - this.startMs;
    const cpu = process.cpuUsage(this.startCpu);
    const times = machineTimes();
    const totalMs = times.totalMs - this.startTimes.totalMs;
    return {
      durationMs,
      loopUtilization: performance.eventLoopUtilization(this.startLoop).utilization,
      loopThreadCores: (loopThreadCpuMs() - this.startLoopThreadMs) / durationMs,
      processCores: (cpu.user + cpu.system) / 1000 / durationMs,
      machineBusy: totalMs > 0 ? (times.busyMs - this.startTimes.busyMs) / totalMs : 0,
      // The histogram holds each whole interval between the timer's runs: its lateness is what
      // exceeds the resolution.
      loopDelay: distributionOf(this.loop, LOOP_RESOLUTION_MS),
      poolProbe: distributionOf(this.pool, 0),
    };
  }

  /** One window of `durationMs`. */
  async sample(durationMs: number): Promise<WaitWindow> {
    this.start();
    await new Promise((resolve) => setTimeout(resolve, durationMs));
    return this.stop();
  }

  close(): void {
    if (this.isRunning) this.stop();
    close(this.fd, () => undefined);
  }

  private probe(): void {
    const window = this.window;
    const submittedMs = performance.now();
    fstat(this.fd, () => {
      if (!this.isRunning || window !== this.window) return;
      this.pool.record(Math.max(1, Math.round((performance.now() - submittedMs) * NS_PER_MS)));
      this.timer = setTimeout(() => this.probe(), PROBE_INTERVAL_MS);
      this.timer.unref();
    });
  }
}

/** The histogram's values (ns) in ms, less `baseMs` (not below zero). */
function distributionOf(
  histogram: IntervalHistogram | RecordableHistogram,
  baseMs: number,
): Distribution {
  if (histogram.count === 0) return { count: 0, meanMs: 0, p50Ms: 0, p99Ms: 0, maxMs: 0 };
  const ms = (ns: number): number => Math.max(0, ns / NS_PER_MS - baseMs);
  return {
    count: histogram.count,
    meanMs: ms(histogram.mean),
    p50Ms: ms(histogram.percentile(50)),
    p99Ms: ms(histogram.percentile(99)),
    maxMs: ms(histogram.max),
  };
}

interface CpuTimes {
  readonly busyMs: number;
  readonly totalMs: number;
}

/** Every CPU's time since boot, summed: busy, and in all (idle included; Linux counts iowait as idle here). */
function machineTimes(): CpuTimes {
  let busyMs = 0;
  let totalMs = 0;
  for (const { times } of cpus()) {
    const total = times.user + times.nice + times.sys + times.idle + times.irq;
    busyMs += total - times.idle;
    totalMs += total;
  }
  return { busyMs, totalMs };
}

/** Clock ticks per second of /proc's CPU times (USER_HZ, 100 on Linux). */
const USER_HZ = 100;

/** The main (loop) thread's user and system CPU time so far, in ms; NaN without /proc. */
function loopThreadCpuMs(): number {
  try {
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / USER_HZ;
  } catch {
    return Number.NaN;
  }
}
