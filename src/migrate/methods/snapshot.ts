/**
 * The `snapshot` method (ESX 3.5 Storage vMotion): freeze the source, send the guest's writes to
 * a redo log (`Overlay`), copy the frozen source, then consolidate: start a fresh log, copy the
 * previous one into the destination, drop it from the chain, and repeat until the newest log is
 * small enough to copy in the switchover.
 *
 * Invariant (what is on the target, and when a write may be acknowledged):
 *   The guest sees the frozen source overlaid by every redo log created so far, oldest first. A
 *   write is acknowledged once it is in the newest log (durable there after a flush or FUA); the
 *   source is never written from the interpose on, until a rollback. The target holds the frozen
 *   source once the base copy is done, plus every log dropped from the chain: a log leaves the
 *   chain only after it landed on the target, so "target + the logs still in the chain" is always
 *   what the guest sees, and the Overlay reads from exactly that. At switchover, with guest I/O
 *   held, the logs still in the chain go to the target, which then equals the guest's view.
 *
 * Rollback: "source + every log ever created, oldest first" is also what the guest sees, so every
 * log is kept (as a device, and its presence bitmap) until `dispose`, even once consolidated: the
 * dropped ones are on the target only, not on the source.
 *
 * Logs hold whole granules, and their allocated extents equal their presence maps (overlay.ts), so
 * after a crash the host can replay the log files onto the source with `applyRedoLog`.
 *
 * A failed redo-log write fails that guest request (the log is the only place it could go) and
 * the job, with `ERR_TARGET_FAILED` (the logs live in the destination datastore): the rollback
 * puts the guest back on the source. A failed destination write fails the job the same way; the
 * guest is untouched then, its writes being in the logs.
 */
import { performance } from 'node:perf_hooks';
import type { BlockDevice } from '../../block/device.js';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { Overlay, type RedoLog } from '../../block/overlay.js';
import { assert } from '../../util/assert.js';
import { errorMessageOf } from '../../util/errors.js';
import { checkNotCancelled, MigrateError, MigrateErrorCode } from '../errors.js';
import type { Method, MethodContext, MethodRun, Scratch } from '../method.js';

/**
 * The redo log's grain: a guest write smaller than a grain costs a read-modify-write of the whole
 * grain into the log, so a 64 KiB grain turns a 4 KiB random write into 64 KiB of log to
 * consolidate, 16 times the guest's rate, and the rounds never converge under such a guest. 4 KiB
 * is the page and file-system block (VMware's redo logs are sector-grained); it must stay at
 * least the file system's block so the log's allocation map is its presence map (recovery).
 */
/** Rounds run before a log that does not shrink ends them: fewer would judge on noise. */
const ROUNDS_BEFORE_TREND = 3;

const REDO_GRAIN_BYTES = 4096;

export const snapshot: Method = (context) => new SnapshotRun(context);

class SnapshotRun implements MethodRun {
  /** Consolidation rounds so far (the base copy is not counted). */
  passes = 0;
  private readonly context: MethodContext;
  private overlay: Overlay | undefined;
  /** Every scratch created, for `dispose`. */
  private readonly scratches: Scratch[] = [];
  /** Every log that ever took writes, oldest first, for `rollback`. */
  private readonly history: RedoLog[] = [];
  /** What of the frozen base is still to copy; undefined before the copy starts. */
  private baseToCopy: DirtyBitmap | undefined;
  private isBaseCopied = false;
  /** Measured on the last copy (base or log); undefined until something was copied. */
  private rateBytesPerMs: number | undefined;
  /** The converge in progress or last settled: rollback waits for it to stop. */
  private converging: Promise<void> = Promise.resolve();
  private logFailure: MigrateError | undefined;

  constructor(context: MethodContext) {
    this.context = context;
  }

  get dirtyBytes(): number {
    const logged = this.overlay?.logs.reduce((sum, log) => sum + log.present.dirtyBytes, 0) ?? 0;
    return (this.baseToCopy?.dirtyBytes ?? 0) + logged;
  }

  /**
   * First call: freezes the source behind log 1, copies it, rebases the overlay onto the target.
   * Every call: consolidation rounds until the newest log fits the downtime target, or the round
   * limit (then the switchover copies what is left, guest held). Settles only once nothing it
   * started is running.
   */
  converge(): Promise<void> {
    this.converging = this.convergeOnce();
    return this.converging;
  }

  /** With guest I/O drained: the logs still in the chain, oldest first, onto the target. */
  async finalCopy(): Promise<void> {
    this.throwIfLogFailed();
    const overlay = this.overlay;
    assert(overlay !== undefined && this.isBaseCopied, 'finalCopy after converge resolved');
    for (const log of [...overlay.logs]) await this.copyLog(log);
    this.throwIfLogFailed();
  }

  /**
   * With guest I/O held, after converge settled: every log ever created, oldest first, onto the
   * source, then a flush, so the source alone holds what the guest wrote. The signal has fired
   * by now, so nothing here checks it.
   */
  async rollback(): Promise<void> {
    await this.converging.catch(() => undefined);
    for (const log of this.history) {
      await applyRuns(log.device, this.context.source, presentRuns(log.present));
    }
    if (this.history.length > 0) await this.context.source.flush();
  }

  /** Removes every scratch, even if some removals fail; rethrows the first failure. */
  async dispose(): Promise<void> {
    await this.converging.catch(() => undefined);
    const outcomes = await Promise.allSettled(this.scratches.map((scratch) => scratch.remove()));
    for (const outcome of outcomes) if (outcome.status === 'rejected') throw outcome.reason;
  }

  private async convergeOnce(): Promise<void> {
    if (!this.isBaseCopied) {
      if (this.overlay === undefined) await this.freeze();
      await this.copyBase();
    }
    this.context.emit({ type: 'phase', phase: 'consolidate' });
    await this.consolidate();
  }

  /** Log 1, and the overlay over the source in the guest's path: the source is frozen from here. */
  private async freeze(): Promise<void> {
    const scratch = await this.createLog(1);
    const overlay = new Overlay(this.context.source, scratch.device, {
      granularityBytes: Math.min(REDO_GRAIN_BYTES, this.context.tuning.granularityBytes),
      onFailure: (error) => this.failLog(error),
    });
    this.history.push(overlay.newestLog);
    checkNotCancelled(this.context.signal);
    await this.context.interpose(overlay);
    this.overlay = overlay;
  }

  /** The whole frozen source to the target (no lock: nothing writes the source now). */
  private async copyBase(): Promise<void> {
    const overlay = this.overlay;
    assert(overlay !== undefined, 'the source is frozen before its copy');
    this.context.emit({ type: 'phase', phase: 'copy' });
    const copier = this.context.copier;
    const baseToCopy = new DirtyBitmap(overlay.size, this.context.tuning.granularityBytes);
    this.context.markInitial(baseToCopy);
    this.baseToCopy = baseToCopy;
    // Not measured for the rounds: the base copy walks the disk in order, several times faster
    // than a round copies a log's scattered grains, and its rate would promise a final copy that
    // the switchover cannot keep.
    await copier.copyPass(baseToCopy);
    this.throwIfLogFailed();
    // The target now reads as the frozen source: logs dropped after consolidation fall to it.
    overlay.rebase(this.context.target);
    this.isBaseCopied = true;
  }

  /** Rounds until what the logs hold fits the downtime target, or `passMax` rounds in this call. */
  private async consolidate(): Promise<void> {
    const overlay = this.overlay;
    assert(overlay !== undefined, 'consolidation after the base copy');
    const { downtimeTargetMs, passMax } = this.context.tuning;
    let previousBytes = Number.POSITIVE_INFINITY;
    for (let round = 0; ; round += 1) {
      checkNotCancelled(this.context.signal);
      this.throwIfLogFailed();
      const pendingBytes = this.dirtyBytes;
      if (round >= ROUNDS_BEFORE_TREND && pendingBytes >= previousBytes) {
        // The guest fills each new log faster than a round empties the last: more rounds make
        // the job longer and the final log larger, never smaller.
        this.context.emit({
          type: 'message',
          message: `redo log does not shrink (${pendingBytes} bytes after round ${round}); the switchover copies it`,
        });
        return;
      }
      previousBytes = pendingBytes;
      // Half the target for the copy: the flush of what it wrote takes about as long.
      const rate = this.rateBytesPerMs;
      if (
        pendingBytes === 0 ||
        (rate !== undefined && pendingBytes <= rate * downtimeTargetMs * 0.5)
      )
        return;
      if (round >= passMax) {
        this.context.emit({
          type: 'message',
          message: `redo log still holds ${pendingBytes} bytes after ${passMax} rounds; the switchover copies them`,
        });
        return;
      }
      await this.consolidateRound(overlay);
    }
  }

  /** A fresh log takes the writes (guest held for the swap only); the previous one goes to the target. */
  private async consolidateRound(overlay: Overlay): Promise<void> {
    const scratch = await this.createLog(this.history.length + 1);
    checkNotCancelled(this.context.signal);
    const previous = overlay.newestLog;
    const fresh = await this.context.withGuestHeld(async () => overlay.pushLog(scratch.device));
    this.history.push(fresh);
    this.passes += 1;
    this.context.emit({ type: 'pass', pass: this.passes, dirtyBytes: previous.present.dirtyBytes });
    await this.copyLog(previous);
    assert(overlay.dropOldestLog() === previous, 'the consolidated log is the oldest');
  }

  /**
   * Copies a frozen log's granules to the target with the job's copier (its speed, window and
   * bytes count), measuring the rate; counts as progress. Zeros the guest wrote into the log are
   * zeroed where the target was written (the copier's `touched`, which the base copy marked);
   * elsewhere the target reads as zeros already.
   */
  private async copyLog(log: RedoLog): Promise<void> {
    const { copier, progress } = this.context;
    const bytes = log.present.dirtyBytes;
    if (bytes === 0) return;
    progress.grow(bytes);
    const startedMs = performance.now();
    // A clone: the log's own map must keep saying what it holds (reads, rollback).
    await copier.copyPass(log.present.clone(), { from: log.device, isDirtyAllData: true });
    this.measure(bytes, startedMs);
  }

  private async createLog(number: number): Promise<Scratch> {
    const scratch = await this.context.createScratch(`redo-${number}`);
    this.scratches.push(scratch);
    return scratch;
  }

  private measure(bytes: number, startedMs: number): void {
    const elapsedMs = performance.now() - startedMs;
    if (bytes > 0 && elapsedMs > 0) this.rateBytesPerMs = bytes / elapsedMs;
  }

  private failLog(reason: unknown): void {
    this.logFailure ??= new MigrateError(
      MigrateErrorCode.TargetFailed,
      `a guest write to the redo log failed: ${errorMessageOf(reason)}`,
      { cause: reason },
    );
  }

  private throwIfLogFailed(): void {
    if (this.logFailure !== undefined) throw this.logFailure;
  }
}

/** One run to copy from a log: `data` is read and written, `zero` is zeroed. */
interface Run {
  readonly offset: number;
  readonly length: number;
  readonly kind: 'data' | 'zero';
}

/** Bounds of `applyRuns`: at most their product in buffers (8 MiB). */
const APPLY_CHUNK_BYTES = 1024 * 1024;
const APPLY_IN_FLIGHT_MAX = 8;

/**
 * Replays a redo log onto `onto` (the source, after a crash in the middle of a snapshot
 * migration): every allocated extent of `log`, in order, in chunks of at most 1 MiB, at most 8 in
 * flight. Resolves with the bytes applied. Extents of kind `data` are copied; `zero` (allocated,
 * reads as zeros: the log holds zeros written there) is zeroed; holes are what the log never held.
 *
 * Preconditions: `log` is a redo log written by an `Overlay` (whole granules, zeros as data) on a
 * backend that reports extents (asserted) and allocates in units no larger than the overlay's
 * granule, so its extents equal what it holds. Logs are applied oldest first, each fully before
 * the next. On failure it rejects once the chunks in flight settled; a replay may simply be run
 * again (it only rewrites the same bytes).
 */
export async function applyRedoLog(log: BlockDevice, onto: BlockDevice): Promise<number> {
  assert(log.caps.canExtents, 'a redo log must report its extents to be replayed');
  assert(log.size === onto.size, 'a redo log has the size of the disk');
  return applyRuns(log, onto, allocatedRuns(log));
}

async function* allocatedRuns(log: BlockDevice): AsyncGenerator<Run> {
  let at = 0;
  while (at < log.size) {
    const extents = await log.extents(at, log.size - at);
    for (const extent of extents) {
      if (extent.kind === 'hole') continue;
      const end = Math.min(log.size, extent.offset + extent.length);
      for (let offset = Math.max(at, extent.offset); offset < end; offset += APPLY_CHUNK_BYTES) {
        yield { offset, length: Math.min(APPLY_CHUNK_BYTES, end - offset), kind: extent.kind };
      }
    }
    const last = extents[extents.length - 1];
    assert(last !== undefined && last.offset + last.length > at, 'extents make progress');
    at = last.offset + last.length;
  }
}

function* presentRuns(present: DirtyBitmap): Generator<Run> {
  let at = 0;
  for (;;) {
    const run = present.nextDirty(at, APPLY_CHUNK_BYTES);
    if (run === null) return;
    yield { offset: run.offset, length: run.length, kind: 'data' };
    at = run.offset + run.length;
  }
}

/** Copies each run from `from` onto `onto`, a bounded window in flight; resolves with the bytes. */
async function applyRuns(
  from: BlockDevice,
  onto: BlockDevice,
  runs: AsyncIterable<Run> | Iterable<Run>,
): Promise<number> {
  const window = new Set<Promise<void>>();
  let failure: unknown;
  let appliedBytes = 0;
  try {
    for await (const run of runs) {
      if (failure !== undefined) break;
      const applied = applyRun(from, onto, run).then(
        () => {
          appliedBytes += run.length;
        },
        (error: unknown) => {
          failure ??= error;
        },
      );
      window.add(applied);
      void applied.finally(() => window.delete(applied));
      if (window.size >= APPLY_IN_FLIGHT_MAX) await Promise.race(window);
    }
  } finally {
    await Promise.all(window);
  }
  if (failure !== undefined) throw failure;
  return appliedBytes;
}

async function applyRun(from: BlockDevice, onto: BlockDevice, run: Run): Promise<void> {
  if (run.kind === 'zero') {
    await onto.writeZeroes(run.offset, run.length, { mayTrim: true });
    return;
  }
  await onto.write(run.offset, await from.read(run.offset, run.length));
}
