/**
 * The `sxm` method (Citrix XenServer Storage XenMotion): snapshot the disk; from that instant
 * every guest write goes synchronously to source and destination; in the background the frozen
 * snapshot is copied to the destination, never over a block a mirrored write has already placed
 * there (DESIGN.md, method 4). A VM's disks enter snapshot+mirror one at a time, as the runner
 * converges them one after another.
 *
 * The snapshot is logical: our images are raw files, so nothing is frozen on disk. The frozen
 * content of granule g is the source's content of g until the first mirrored write places g on
 * the target; from then on the target's g is kept equal to the source's by every mirrored write,
 * and the snapshot's g is never needed again. The instant is `interpose`: from then on every
 * write goes through `SxmFilter`.
 *
 * Invariant (what is on the target, and when a write may be acknowledged):
 *   For every granule clear in `toCopy` (placed there by a mirrored write that covered it whole,
 *   or carried by the background copy) that no mirrored write or copy chunk holds in `lock`, the
 *   target holds exactly what the source holds once the queue's entries overlapping that granule
 *   (queued or in flight, mirror-queue.ts) have landed, in the queue's order; with no such entry
 *   (always, in `sync` mode), it holds it now. A guest write is acknowledged once the source has
 *   it and the target has it too (sync) or its target form, fills included, is queued (async),
 *   or the target has failed (see below). So at switchover, with guest I/O drained, the queue
 *   drained and `toCopy` clean, the target equals the source. The source has every acknowledged
 *   write, in every mode, until the commit.
 *
 * How it is kept:
 *   - Every guest write, zero and trim holds its granule span in `lock`. Placement is exact at
 *     granule level: where it covers a granule still in `toCopy` only in part, the rest of that
 *     granule (a fill) is read from the source and written to the target under the same hold, so
 *     the whole granule is right before it leaves `toCopy`.
 *   - sync: the queue's entries over the mutation and its fills are superseded first (queued
 *     parts dropped, those in flight waited for: a sync write never overtakes an older queued
 *     one); then both sides at once; the span is placed once the target side landed whole.
 *   - async: the source first; then the fills are read from the source (under the hold, so they
 *     match it) and the mutation's target form and the fills are queued, and the span is placed
 *     at that moment: the queue will make the target whole there. A fill that reads as zeros is
 *     not queued where the target is fresh and nothing queued or in flight overlaps it (then the
 *     target reads as zeros there already, and will).
 *   - The background copy holds each chunk in `lock`, and only then picks the granules still in
 *     `toCopy`: a granule placed while the chunk waited for the lock is not touched. The walk
 *     picks a chunk before its hold, so the copy is `Copier.copyPass` with `recheckUnderLock`.
 *     Before it reads a run it supersedes the queue's entries there (the source has their bytes
 *     or newer), so no older queued write lands over the copy.
 *   - A write the source refused, or whose target side is not whole, goes back into `toCopy`, so
 *     the next walk (or `finalCopy`) copies the source's content there again; so do the ranges
 *     of queued entries the target will not get (failure, cancel).
 *   - Holes: a zero or hole run is written only where the target may have been written (the
 *     copier's `isFresh`, which every write through the job's target marks); elsewhere the fresh
 *     target already reads as zeros, so a thin target stays thin.
 *
 * A failed target write (now or from the queue) fails the job with `ERR_TARGET_FAILED`; the
 * guest's write is still acknowledged by the source, the queue is discarded, and later writes go
 * to the source only: a broken destination never fails or slows the guest. The source always has
 * every write, so rollback has nothing to undo.
 */
import type { BlockDevice } from '../../block/device.js';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { RangeLock } from '../../block/range-lock.js';
import { assert } from '../../util/assert.js';
import type { Copier } from '../copier.js';
import type { Method, MethodContext, MethodRun, MirrorStats } from '../method.js';
import {
  COPY_YIELD_MS_MAX,
  ENTRY_OVERHEAD_BYTES,
  queueCostOf,
  type Reservation,
  type TargetWrite,
  writeTarget,
} from '../mirror-queue.js';
import {
  type GuestMutation,
  MirroredWriteFilter,
  type MirrorQueueSetup,
} from '../mirrored-writes.js';
import type { Progress } from '../progress.js';

interface Span {
  readonly offset: number;
  readonly length: number;
}

/** The part of a partly written granule that a placement copies from the source. */
interface Fill extends Span {
  /** The target was never written here, so it reads as zeros already. */
  readonly isFresh: boolean;
}

/** Queue room a mutation's fills may take (as writes: whether they read as zeros is not known yet). */
function fillCost(fills: readonly Fill[]): number {
  let bytes = 0;
  for (const fill of fills) bytes += 2 * ENTRY_OVERHEAD_BYTES + fill.length; // as `queueCostOf`
  return bytes;
}

/** What the filter and the background copy share; the filter's changes to `toCopy` are made here. */
export class SxmState {
  /** Granules not yet on the target: all at the snapshot; cleared when placed or copied. */
  readonly toCopy: DirtyBitmap;
  /** Held over each mirrored write's granule span and each copy chunk. */
  readonly lock = new RangeLock();
  private readonly progress: Progress;

  constructor(sizeBytes: number, granularityBytes: number, progress: Progress) {
    this.toCopy = new DirtyBitmap(sizeBytes, granularityBytes);
    this.progress = progress;
  }

  /** The whole granules `[offset, offset + length)` touches, clipped to the disk. */
  granuleSpan(offset: number, length: number): Span {
    const granule = this.toCopy.granularityBytes;
    const start = Math.floor(offset / granule) * granule;
    const end = Math.min(this.toCopy.sizeBytes, Math.ceil((offset + length) / granule) * granule);
    return { offset: start, length: end - start };
  }

  /** The target now holds the source's content on these granules; counted as progress. */
  place(offset: number, length: number): void {
    const before = this.toCopy.dirtyBytes;
    this.toCopy.clear(offset, length);
    this.progress.add(before - this.toCopy.dirtyBytes);
  }

  /** These granules must be copied again; the total grows by what was placed before. */
  unplace(offset: number, length: number): void {
    const before = this.toCopy.dirtyBytes;
    this.toCopy.mark(offset, length);
    this.progress.grow(this.toCopy.dirtyBytes - before);
  }
}

/**
 * The filter the guest's Switch points at from the snapshot on (reads, flushes and extents go to
 * the source, mirrored-writes.ts); its policy for each guest mutation is the one above.
 */
export class SxmFilter extends MirroredWriteFilter {
  private readonly state: SxmState;
  /** The job's copier: where the target is still fresh, and what counts as zeros. */
  private readonly copier: Copier;

  constructor(
    source: BlockDevice,
    target: BlockDevice,
    state: SxmState,
    copier: Copier,
    setup: MirrorQueueSetup,
  ) {
    super(source, target, setup);
    this.state = state;
    this.copier = copier;
  }

  /**
   * Applies a guest mutation under the granule span's hold, by the queue's admission: to both
   * sides (sync), or to the source and then the queue (async), as the invariant above says.
   * Rejects with the source's error if the source refused it (the granules then go back into
   * `toCopy`, since the target may hold what the source does not).
   */
  protected override async mutate(mutation: GuestMutation): Promise<void> {
    if (this.isSourceOnly) return mutation.toSource();
    const span = this.state.granuleSpan(mutation.offset, mutation.length);
    const release = await this.state.lock.acquire(span.offset, span.length, this.lockWaits);
    try {
      if (this.isSourceOnly) return await mutation.toSource();
      const fills = this.edgeFills(mutation.offset, mutation.length, span);
      const cost = queueCostOf([mutation.target]) + fillCost(fills);
      const admission = await this.queue.reserve(cost);
      if (admission.way === 'closed') return await mutation.toSource();
      if (admission.way === 'sync') return await this.toBoth(mutation, span, fills);
      try {
        await mutation.toSource();
      } catch (error) {
        this.queue.cancel(admission);
        this.state.unplace(span.offset, span.length);
        throw error;
      }
      if (await this.queueTarget(mutation, fills, admission)) {
        this.state.place(span.offset, span.length);
      }
    } finally {
      release();
    }
  }

  protected override forget(offset: number, length: number): void {
    const span = this.state.granuleSpan(offset, length);
    this.state.unplace(span.offset, span.length);
  }

  /** Synchronous: after older queued entries there, on both sides; placed once whole. */
  private async toBoth(mutation: GuestMutation, span: Span, fills: readonly Fill[]): Promise<void> {
    const [onSource, onTarget] = await Promise.allSettled([
      mutation.toSource(),
      this.placeOnTarget(mutation, fills),
    ]);
    if (onTarget.status === 'rejected') {
      this.state.unplace(span.offset, span.length);
      this.failTarget(onTarget.reason);
    }
    if (onSource.status === 'rejected') {
      this.state.unplace(span.offset, span.length);
      throw onSource.reason;
    }
    if (onTarget.status === 'fulfilled' && onTarget.value) {
      this.state.place(span.offset, span.length);
    }
  }

  /**
   * Async, once the source has the mutation: reads the fills from the source and queues them
   * with the mutation's target form. Resolves false when a fill could not be read (the span is
   * then not whole, and stays in `toCopy`); never rejects after the queueing.
   */
  private async queueTarget(
    mutation: GuestMutation,
    fills: readonly Fill[],
    admission: Reservation,
  ): Promise<boolean> {
    const reads = await Promise.all(fills.map((fill) => this.readFill(fill)));
    const writes: TargetWrite[] = [mutation.target];
    let isWhole = true;
    for (const [index, fill] of fills.entries()) {
      const data = reads[index];
      if (data === undefined) {
        isWhole = false;
      } else if (!this.copier.isZero(data)) {
        writes.push({ kind: 'write', offset: fill.offset, data });
      } else if (
        !this.copier.isFresh(fill.offset, fill.length) ||
        this.queue.overlaps(fill.offset, fill.length)
      ) {
        // Checked now, in the turn that queues: no target write can land in between.
        writes.push({ kind: 'zero', offset: fill.offset, length: fill.length, mayTrim: true });
      }
    }
    this.queue.enqueue(admission, writes);
    return isWhole;
  }

  /** A fill's bytes from the source; undefined if it could not be read (not the guest's failure). */
  private async readFill(fill: Fill): Promise<Buffer | undefined> {
    try {
      return await this.source.read(fill.offset, fill.length);
    } catch {
      // The granule stays in `toCopy` and the copy carries it later.
      return undefined;
    }
  }

  /**
   * The parts of the span's first and last granules that the mutation leaves out, where those
   * granules are not placed yet: without them the target's granule would mix the mutation with
   * zeros (or stale data) while `toCopy` says it is done. Computed before the mutation is issued
   * (its target write marks the granules written when it settles), so `isFresh` describes the
   * target as it was.
   */
  private edgeFills(offset: number, length: number, span: Span): Fill[] {
    const { toCopy } = this.state;
    const end = offset + length;
    const spanEnd = span.offset + span.length;
    const fills: Fill[] = [];
    if (span.offset < offset && toCopy.isDirty(span.offset, 1)) {
      const fill = { offset: span.offset, length: offset - span.offset };
      fills.push({ ...fill, isFresh: this.copier.isFresh(fill.offset, fill.length) });
    }
    if (end < spanEnd && toCopy.isDirty(end, 1)) {
      const fill = { offset: end, length: spanEnd - end };
      fills.push({ ...fill, isFresh: this.copier.isFresh(fill.offset, fill.length) });
    }
    return fills;
  }

  /**
   * The target side of a mutation: the mutation itself and the edge fills, all settled before
   * it returns (the hold must outlive every request it covers), each written only once the
   * queue's older entries there are superseded. Resolves false when a fill could not read the
   * source, so the span is not whole on the target; rejects on a target failure.
   */
  private async placeOnTarget(mutation: GuestMutation, fills: readonly Fill[]): Promise<boolean> {
    await this.queue.supersede(mutation.offset, mutation.length);
    for (const fill of fills) await this.queue.supersede(fill.offset, fill.length);
    // Older queued writes may have landed meanwhile: freshness as of now, when all are issued.
    const results = await Promise.allSettled([
      writeTarget(this.target, mutation.target),
      ...fills.map((fill) =>
        this.fill({ ...fill, isFresh: this.copier.isFresh(fill.offset, fill.length) }),
      ),
    ]);
    for (const result of results) if (result.status === 'rejected') throw result.reason;
    return results.every((result) => result.status === 'fulfilled' && result.value !== false);
  }

  /**
   * Copies one fill from the source to the target; false if the source could not be read. Not
   * throttled: the guest's write waits for it, and the copy's speed limit is for the bulk copy.
   */
  private async fill(fill: Fill): Promise<boolean> {
    let data: Buffer;
    try {
      data = await this.source.read(fill.offset, fill.length);
    } catch {
      // Not the guest's failure: the granule stays in `toCopy` and the copy carries it later.
      return false;
    }
    if (!this.copier.isZero(data)) {
      await this.target.write(fill.offset, data);
    } else if (!fill.isFresh) {
      await this.target.writeZeroes(fill.offset, fill.length, { mayTrim: true });
    }
    return true;
  }
}

export const sxm: Method = (context) => new SxmRun(context);

class SxmRun implements MethodRun {
  passes = 0;
  private readonly context: MethodContext;
  private readonly state: SxmState;
  private readonly filter: SxmFilter;
  private isMirroring = false;
  /** The copy walking now, if any: `dispose` waits for it, so no chunk outlives the job. */
  private copying: Promise<void> | undefined;

  constructor(context: MethodContext) {
    this.context = context;
    const { size } = context.source;
    this.state = new SxmState(size, context.tuning.granularityBytes, context.progress);
    this.filter = new SxmFilter(context.source, context.target, this.state, context.copier, {
      tuning: context.tuning,
      emit: (event) => context.emit(event),
    });
    // A cancelled or failed job is undone: the target gets nothing more, writes go to the source.
    context.signal.addEventListener('abort', () => void this.filter.queue.close(), {
      once: true,
    });
  }

  /** Granules not placed nor copied, and bytes still queued for the target. */
  get dirtyBytes(): number {
    return this.state.toCopy.dirtyBytes + this.filter.queue.pendingBytes;
  }

  get mirrorStats(): MirrorStats {
    return this.filter.stats;
  }

  /**
   * The first call takes the snapshot (everything to copy, the mirror in the guest's path) and
   * copies it; resolves once every granule is placed or copied. Called again (the VM's later
   * disks converged since), it copies only what went back into `toCopy`.
   */
  async converge(): Promise<void> {
    if (!this.isMirroring) {
      this.context.markInitial(this.state.toCopy);
      await this.context.interpose(this.filter);
      this.isMirroring = true;
      this.filter.queue.start();
      this.context.emit({ type: 'phase', phase: 'copy' });
    }
    this.copying = this.copyUntilClean();
    await Promise.race([this.copying, this.filter.failed]);
  }

  /**
   * With guest I/O drained: the whole queue, then only granules a failed mirrored write put
   * back, if any.
   */
  settle(): Promise<void> {
    return this.filter.queue.settle();
  }

  async finalCopy(): Promise<void> {
    await this.state.lock.waitIdle();
    await this.filter.queue.drain();
    this.filter.throwIfTargetFailed();
    if (!this.state.toCopy.isClean) await this.copySnapshot();
    this.filter.throwIfTargetFailed();
    assert(this.state.toCopy.isClean, 'sxm: a walk with the guest drained leaves nothing to copy');
  }

  /** The source has every write (mirroring only ever adds the target): nothing to undo. */
  async rollback(): Promise<void> {}

  /**
   * Waits for a copy still walking after a failure (the job's signal has stopped it by now),
   * then closes the queue (empty after a switchover) and waits for its writes in flight.
   */
  async dispose(): Promise<void> {
    await this.copying?.catch(() => undefined);
    await this.filter.queue.close();
  }

  private async copyUntilClean(): Promise<void> {
    while (!this.state.toCopy.isClean) {
      this.passes += 1;
      await this.copySnapshot();
      this.filter.throwIfTargetFailed();
    }
  }

  /**
   * One walk of the frozen snapshot: every granule in `toCopy` once, each chunk held in `lock`
   * and rechecked under it, so a granule a mirrored write placed is never copied over.
   */
  private copySnapshot(): Promise<void> {
    const { lock, toCopy } = this.state;
    const { queue } = this.filter;
    return this.context.copier.copyPass(toCopy, {
      lock,
      recheckUnderLock: true,
      supersede: (offset, length) => queue.supersede(offset, length),
      yieldTo: () => queue.whenQuiet(COPY_YIELD_MS_MAX),
    });
  }
}
