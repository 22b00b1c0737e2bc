import { performance } from 'node:perf_hooks';
import type { BlockDevice } from '../block/device.js';
import { DirtyBitmap } from '../block/dirty-bitmap.js';
import { DirtyTracker } from '../block/dirty-tracker.js';
import { LatencyMeter, type LatencyTotals } from '../block/latency-meter.js';
import type { Switch } from '../block/switch.js';
import { assert } from '../util/assert.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { type Logger, silentLogger } from '../util/logger.js';
import { Copier, IN_FLIGHT_MAX_DEFAULT } from './copier.js';
import type { CopyOffload, CopyPath } from './copy-offload.js';
import type { CopyState } from './copy-state.js';
import { cancelledError, MigrateError, MigrateErrorCode } from './errors.js';
import { GuestFirst } from './guest-first.js';
import {
  METHOD_TUNING_DEFAULT,
  type MethodEvent,
  type MethodName,
  type MethodRun,
  type MethodTuning,
  type MirrorStats,
  type Scratch,
} from './method.js';
import { methodNamed } from './methods/index.js';
import { Progress, type ProgressSnapshot } from './progress.js';
import { WriteIntentFilter } from './write-intent.js';

/**
 * One migration: keeps fresh destinations in step with one or more disks the guest keeps using
 * (with the chosen method), then switches them over together (DESIGN.md, "Switchover"):
 *
 *   pause every disk's Switch (hold new guest I/O, drain what is in flight)
 *   → each method's final copy → flush every destination → `commit()` (the caller makes the new
 *   authority durable) → re-point every Switch to its destination → resume.
 *
 * Either every disk moves or none does: a failure or cancel before `commit()` resolves rolls
 * every disk back to its source (the guest never noticed anything but, at most, one pause), and
 * the caller deletes the destinations. After `commit()` resolves the move is done; what fails
 * after it (closing the old devices) is the caller's cleanup, not a reason to go back.
 *
 * Never touches files: the caller (the host's agent) creates the destination devices, journals,
 * and commits.
 */
export interface MigrationDisk {
  readonly name: string;
  /** The guest's stun point; it points at `source` when the migration starts. */
  readonly switch: Switch;
  readonly source: BlockDevice;
  /**
   * What the copier reads, when not `source`: the same data below the guest's I/O counters
   * (host/disk-stack.ts), so a copy's reads are not counted as the guest's (latency, IOPS).
   */
  readonly copySource?: BlockDevice;
  /** The new, empty destination image (reads as zeros), as the copier should write it. */
  readonly target: BlockDevice;
  /** What the Switch points at after the switchover (the target with the serving filters). */
  readonly targetTop: BlockDevice;
  /** Creates a scratch device (a redo log) for the snapshot method. */
  readonly createScratch: (label: string) => Promise<Scratch>;
  /** Both images are files on this host: the copier lets the kernel move the data. */
  readonly offload?: CopyOffload;
  /**
   * A resumable move's persisted state (copy-state.ts): its write-intent filter goes in the
   * guest's path with the method's, the copier reports to it, and the migration checkpoints it.
   */
  readonly copyState?: CopyState;
  /** The target already holds what `copyState` says: the first pass copies only the rest. */
  readonly isResumed?: boolean;
}

export interface MigrationOptions {
  readonly method: MethodName;
  /** Copy rate in bytes per second, 0 for unlimited; `setSpeed` changes it later. */
  readonly speedBytesPerSecond?: number;
  readonly chunkBytes?: number;
  readonly inFlightMax?: number;
  readonly tuning?: Partial<MethodTuning>;
  /**
   * How often a resumable disk's copy state is made durable; default 1 s. At most this much copy
   * is redone after a crash, and each checkpoint flushes the destination.
   */
  readonly checkpointMs?: number;
  /** Makes the destinations the authority, durably; called with guest I/O held. */
  readonly commit: () => Promise<void>;
  /**
   * Runs once every disk is in step, just before the switchover, while the mirrors keep the
   * destinations in step (a VM's memory migration, vm-motion.ts: it returns with the guest
   * stopped). A rejection rolls every disk back as any failure before the commit does; the
   * signal fires when the migration is cancelled.
   */
  readonly beforeSwitchover?: (signal: AbortSignal) => Promise<void>;
  readonly onEvent?: (event: MigrationEvent) => void;
  readonly log?: Logger;
}

export type MigrationEvent =
  | MethodEvent
  /** Where the downtime went: draining guest I/O, the final copy, the flush, the commit. */
  | {
      readonly type: 'switchover';
      readonly downtimeMs: number;
      readonly drainMs: number;
      readonly finalCopyMs: number;
      readonly flushMs: number;
      readonly commitMs: number;
    }
  | { readonly type: 'rollback'; readonly reason: string }
  /** The first time a way of copying data (copy-offload.ts) carried a run of a disk. */
  | { readonly type: 'offload'; readonly disk: string; readonly path: CopyPath }
  /**
   * A fixed cost of the move and what it took: the pre-flush before the stun (with its rounds),
   * the destination's thick allocation, the source's deletion (the host's parts).
   */
  | { readonly type: 'cost'; readonly part: string; readonly ms: number; readonly detail?: string };

export interface MigrationResult {
  /** The method that finished the job (dbt may hand over to mirror). */
  readonly method: MethodName;
  readonly bytesCopied: number;
  readonly passes: number;
  readonly durationMs: number;
  /** Time guest I/O was held at the switchover, the longest over the disks. */
  readonly downtimeMs: number;
}

/** A flush faster than this leaves little for the one in the stun. */
const PRE_FLUSH_QUICK_MS = 3;
/** How often a resumable move's copy state is made durable: at most this much copy is redone. */
const CHECKPOINT_MS = 1000;
const PRE_FLUSH_ROUNDS_MAX = 5;

export class Migration {
  readonly requestedMethod: MethodName;
  private methodNow: MethodName;
  private readonly disks: readonly MigrationDisk[];
  private readonly options: MigrationOptions;
  private readonly tuning: MethodTuning;
  private readonly progress: Progress;
  private readonly copiers: Copier[] = [];
  private readonly guestFirsts: GuestFirst[] = [];
  /** Each disk's meter above its method's filter, from the interpose on. */
  private readonly guestLatencies: LatencyTotals[] = [];
  /** Each disk's meter on its target, below the dirty tracker. */
  private readonly targetLatencies: LatencyTotals[] = [];
  private readonly runs: MethodRun[] = [];
  private readonly abort = new AbortController();
  private readonly log: Logger;
  private readonly startedAtMs = performance.now();
  /** Set, synchronously after the last cancellation check, when the commit starts: too late to cancel. */
  private isCommitting = false;
  private isCommitted = false;

  constructor(disks: readonly MigrationDisk[], options: MigrationOptions) {
    assert(disks.length > 0, 'a migration moves at least one disk');
    this.disks = disks;
    this.options = options;
    this.requestedMethod = options.method;
    this.methodNow = options.method;
    this.tuning = { ...METHOD_TUNING_DEFAULT, ...options.tuning };
    this.progress = new Progress(disks.reduce((sum, disk) => sum + bytesToCopy(disk), 0));
    this.log = options.log ?? silentLogger;
  }

  get method(): MethodName {
    return this.methodNow;
  }

  get progressSnapshot(): ProgressSnapshot {
    return this.progress.snapshot();
  }

  /** Bytes still to copy, over every disk's method. */
  get dirtyBytes(): number {
    return this.runs.reduce((sum, run) => sum + run.dirtyBytes, 0);
  }

  get passes(): number {
    return this.runs.reduce((most, run) => Math.max(most, run.passes), 0);
  }

  /**
   * The guest's data requests through the methods' filters (from each one's interpose, until
   * the switchover re-points the disk) and their latencies, summed over the disks: the time the
   * guest spends inside the migration's stack, without the NBD server and socket above it.
   */
  get guestLatency(): LatencyTotals {
    return sumLatencies(this.guestLatencies);
  }

  /**
   * The requests the migration made of the targets (mirrored writes, and the copier's when the
   * kernel does not copy for it) and their latencies, summed over the disks.
   */
  get targetLatency(): LatencyTotals {
    return sumLatencies(this.targetLatencies);
  }

  /**
   * The mirrors' write queues over every disk that mirrors writes (undefined while none does):
   * counts summed, `sync` if any is, the largest peak of one queue.
   */
  get mirrorStats(): MirrorStats | undefined {
    let total: MirrorStats | undefined;
    for (const run of this.runs) {
      const stats = run.mirrorStats;
      if (stats === undefined) continue;
      total = total === undefined ? stats : sumMirrorStats(total, stats);
    }
    return total;
  }

  get bytesCopied(): number {
    return this.copiers.reduce((sum, copier) => sum + copier.copiedBytes, 0);
  }

  /** Changes the copy rate at once (0: unlimited). */
  setSpeed(bytesPerSecond: number): void {
    for (const copier of this.copiers) copier.setSpeed(bytesPerSecond);
  }

  /**
   * Stops the job; `run()` then rolls back and rejects with `ERR_CANCELLED`. Returns false, changing
   * nothing, once the commit has started: the move then completes.
   */
  cancel(): boolean {
    if (this.isCommitting) return false;
    this.abort.abort(cancelledError());
    return true;
  }

  /**
   * Converges every disk (one after another, as XenMotion enters one disk at a time), brings
   * the earlier ones back in step, and switches all over. Rejects, after rolling every disk back
   * to its source, on any failure before the commit.
   */
  async run(): Promise<MigrationResult> {
    const checkpoints = this.startCheckpoints();
    try {
      for (const disk of this.disks) {
        this.checkCancelled();
        const run = this.startMethod(disk);
        this.runs.push(run);
        await run.converge();
      }
      // The disks converged first have drifted while the later ones copied.
      for (const run of this.runs.slice(0, -1)) await run.converge();
      this.checkCancelled();
      // No checkpoint from here on: its flush would compete with the stun's, and a resume after a
      // crash in the switchover starts from the last one as well.
      await checkpoints.stop();
      const downtimeMs = await this.switchover();
      return {
        method: this.methodNow,
        bytesCopied: this.bytesCopied,
        passes: this.passes,
        durationMs: Math.round(performance.now() - this.startedAtMs),
        downtimeMs,
      };
    } catch (error) {
      // An unknown commit outcome must not roll back: the destination may be the authority.
      const isUnknown = errorCodeOf(error) === MigrateErrorCode.CommitUnknown;
      if (!this.isCommitted && !isUnknown) await this.rollback(error);
      throw error;
    } finally {
      await checkpoints.stop();
      for (const guestFirst of this.guestFirsts) guestFirst.stop();
      await Promise.all(
        this.runs.map((run) =>
          run.dispose().catch((error: unknown) => {
            this.log.warn({ err: error }, 'a migration method failed to release its resources');
          }),
        ),
      );
    }
  }

  private startMethod(disk: MigrationDisk): MethodRun {
    const touched = new DirtyBitmap(disk.target.size, this.tuning.granularityBytes);
    // A resumed target holds data: no range of it may be trusted to read as zeros.
    if (disk.isResumed === true) touched.markAll();
    const state = disk.copyState;
    const targetLatency: LatencyTotals = { operations: 0, latencySumUs: 0 };
    this.targetLatencies.push(targetLatency);
    const target = new DirtyTracker(new LatencyMeter(disk.target, targetLatency), touched);
    const guestLatency: LatencyTotals = { operations: 0, latencySumUs: 0 };
    this.guestLatencies.push(guestLatency);
    const inFlightMax = this.options.inFlightMax ?? IN_FLIGHT_MAX_DEFAULT;
    const guestFirst = !this.tuning.isGuestFirst
      ? undefined
      : new GuestFirst({ windowMax: inFlightMax, sample: () => ({ ...guestLatency }) });
    if (guestFirst !== undefined) this.guestFirsts.push(guestFirst);
    const copier = new Copier(disk.copySource ?? disk.source, target, {
      touched,
      progress: this.progress,
      signal: this.abort.signal,
      ...(this.options.chunkBytes === undefined ? {} : { chunkBytes: this.options.chunkBytes }),
      inFlightMax,
      speedBytesPerSecond:
        this.copiers[0]?.speedBytesPerSecond ?? this.options.speedBytesPerSecond ?? 0,
      ...(disk.offload === undefined ? {} : { offload: disk.offload }),
      ...(guestFirst === undefined ? {} : { guestFirst }),
      ...(state === undefined ? {} : { copyState: state }),
      onPath: (path) => this.options.onEvent?.({ type: 'offload', disk: disk.name, path }),
    });
    this.copiers.push(copier);
    return methodNamed(this.options.method)({
      source: disk.source,
      target,
      copier,
      progress: this.progress,
      tuning: this.tuning,
      signal: this.abort.signal,
      // The method's filter goes in the guest's path with a meter above it, so the guest-first
      // window sees the latency the guest sees, range-lock waits and mirrored writes included.
      interpose: (device) => {
        guestFirst?.start();
        const below = state === undefined ? device : new WriteIntentFilter(device, state);
        const metered = new LatencyMeter(below, guestLatency);
        return this.withHeld([disk], async () => {
          disk.switch.repoint(metered);
          state?.startTracking();
        });
      },
      withGuestHeld: (work) => this.withHeld([disk], work),
      createScratch: disk.createScratch,
      markInitial: (bitmap) => {
        if (state !== undefined && disk.isResumed === true) {
          bitmap.merge(state.toCopy(bitmap.granularityBytes));
        } else {
          bitmap.markAll();
        }
      },
      emit: (event) => {
        if (event.type === 'method') this.methodNow = event.method;
        this.options.onEvent?.(event);
      },
    });
  }

  /**
   * Every `checkpointMs` (default `CHECKPOINT_MS`), one disk after another, each resumable disk's state checkpoints
   * (copy-state.ts: flush the target, count what landed, clear quiet intents, persist). A failed
   * checkpoint is logged: the state on disk stays the last good one, which is still true.
   */
  private startCheckpoints(): { stop(): Promise<void> } {
    const states = this.disks.flatMap((disk) =>
      disk.copyState === undefined ? [] : [{ disk, state: disk.copyState }],
    );
    if (states.length === 0) return { stop: async () => {} };
    let running: Promise<void> | undefined;
    const timer = setInterval(() => {
      if (running !== undefined) return;
      running = (async () => {
        for (const { disk, state } of states) {
          await state
            .checkpoint(() => disk.target.flush())
            .catch((error: unknown) => {
              this.log.warn({ disk: disk.name, err: error }, 'copy state checkpoint failed');
            });
        }
      })().finally(() => {
        running = undefined;
      });
    }, this.options.checkpointMs ?? CHECKPOINT_MS);
    return {
      stop: async () => {
        clearInterval(timer);
        await running;
      },
    };
  }

  /** The stun: every disk paused and drained, final copies, flush, commit, re-point, resume. */
  private async switchover(): Promise<number> {
    // An async mirror's backlog is sent before the stun, not inside it, and so is the page
    // cache's: both while the guest runs.
    await Promise.all(this.runs.map((run) => run.settle?.()));
    await this.preFlush();
    if (this.options.beforeSwitchover !== undefined) {
      // A VM's memory: it returns with the guest stopped, so what follows is all stun. What the
      // guest wrote meanwhile is little and was mirrored; the final flush covers it.
      await this.options.beforeSwitchover(this.abort.signal);
      this.checkCancelled();
      await Promise.all(this.runs.map((run) => run.settle?.()));
    }
    this.options.onEvent?.({ type: 'phase', phase: 'switchover' });
    // With the guest held, its latency says nothing: the final copy runs with every chunk.
    for (const guestFirst of this.guestFirsts) guestFirst.stop();
    const stamps: number[] = [performance.now()];
    await Promise.all(this.disks.map((disk) => disk.switch.pause()));
    try {
      stamps.push(performance.now());
      for (const run of this.runs) await run.finalCopy();
      stamps.push(performance.now());
      await this.flushTargets();
      stamps.push(performance.now());
      this.checkCancelled();
      this.isCommitting = true;
      await this.options.commit();
      stamps.push(performance.now());
      this.isCommitted = true;
      for (const disk of this.disks) disk.switch.repoint(disk.targetTop);
    } finally {
      // On failure the switches stay paused: rollback() re-points them to the sources.
      if (this.isCommitted) for (const disk of this.disks) disk.switch.resume();
    }
    const downtimeMs = Math.max(...this.disks.map((disk) => disk.switch.lastPauseMs ?? 0));
    const [paused = 0, drained = 0, copied = 0, flushed = 0, committed = 0] = stamps;
    this.options.onEvent?.({
      type: 'switchover',
      downtimeMs: round(downtimeMs),
      drainMs: round(drained - paused),
      finalCopyMs: round(copied - drained),
      flushMs: round(flushed - copied),
      commitMs: round(committed - flushed),
    });
    return round(downtimeMs);
  }

  /**
   * Writes back what the copy and the mirrored writes left in the page cache while the guest
   * still runs, so the flush in the stun has only the last moments' writes to make durable. One
   * flush after a long copy takes long, and the guest writes more meanwhile: flush again until a
   * flush is quick (or a few rounds have passed).
   */
  private async preFlush(): Promise<void> {
    const firstMs = performance.now();
    let rounds = 0;
    while (rounds < PRE_FLUSH_ROUNDS_MAX) {
      const startedMs = performance.now();
      await this.flushTargets();
      rounds += 1;
      if (performance.now() - startedMs < PRE_FLUSH_QUICK_MS) break;
    }
    this.options.onEvent?.({
      type: 'cost',
      part: 'pre-flush',
      ms: round(performance.now() - firstMs),
      detail: `${rounds} round${rounds === 1 ? '' : 's'}`,
    });
  }

  /** Flushes every destination; a failure is the destination's (`ERR_TARGET_FAILED`). */
  private async flushTargets(): Promise<void> {
    try {
      await Promise.all(this.disks.map((disk) => disk.target.flush()));
    } catch (error) {
      throw new MigrateError(
        MigrateErrorCode.TargetFailed,
        `flushing the destination failed: ${errorMessageOf(error)}`,
        { cause: error },
      );
    }
  }

  /**
   * Puts every disk back on its source: waits for the copy to stop, holds guest I/O, lets each
   * method hand the source everything (the snapshot method merges its redo logs), re-points,
   * resumes. A rollback that fails leaves that disk held: serving it on an incomplete source
   * would show the guest old data, so the error is logged and the guest waits for an operator.
   */
  private async rollback(reason: unknown): Promise<void> {
    if (!this.abort.signal.aborted) this.abort.abort(reason);
    const message =
      errorCodeOf(reason) === MigrateErrorCode.Cancelled ? 'cancelled' : errorMessageOf(reason);
    this.options.onEvent?.({ type: 'rollback', reason: message });
    for (const [index, disk] of this.disks.entries()) {
      const run = this.runs[index];
      if (!disk.switch.isPaused) await disk.switch.pause();
      try {
        await run?.rollback();
        disk.switch.repoint(disk.source);
        disk.switch.resume();
      } catch (error) {
        this.log.error(
          { disk: disk.name, err: error },
          'rollback failed: the disk stays paused so the guest never reads stale data',
        );
      }
    }
  }

  private async withHeld<T>(disks: readonly MigrationDisk[], work: () => Promise<T>): Promise<T> {
    await Promise.all(disks.map((disk) => disk.switch.pause()));
    try {
      return await work();
    } finally {
      for (const disk of disks) disk.switch.resume();
    }
  }

  private checkCancelled(): void {
    if (this.abort.signal.aborted) throw cancelledError();
  }
}

/** What the migration will copy of `disk` at first: all of it, or what a resume still needs. */
function bytesToCopy(disk: MigrationDisk): number {
  if (disk.copyState === undefined || disk.isResumed !== true) return disk.source.size;
  return disk.source.size - disk.copyState.copiedBytes;
}

function sumLatencies(all: readonly LatencyTotals[]): LatencyTotals {
  let operations = 0;
  let latencySumUs = 0;
  for (const totals of all) {
    operations += totals.operations;
    latencySumUs += totals.latencySumUs;
  }
  return { operations, latencySumUs };
}

/** Milliseconds to two decimals, as the switchover and cost events report them. */
function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}

function sumMirrorStats(a: MirrorStats, b: MirrorStats): MirrorStats {
  return {
    mode: a.mode === 'sync' || b.mode === 'sync' ? 'sync' : 'async',
    asyncWrites: a.asyncWrites + b.asyncWrites,
    syncWrites: a.syncWrites + b.syncWrites,
    coalescedBytes: a.coalescedBytes + b.coalescedBytes,
    heldBytes: a.heldBytes + b.heldBytes,
    peakHeldBytes: Math.max(a.peakHeldBytes, b.peakHeldBytes),
    switchesToSync: a.switchesToSync + b.switchesToSync,
    switchesToAsync: a.switchesToAsync + b.switchesToAsync,
    lockAcquires: a.lockAcquires + b.lockAcquires,
    lockWaits: a.lockWaits + b.lockWaits,
    lockWaitMs: a.lockWaitMs + b.lockWaitMs,
  };
}
