/**
 * The `mirror` method (ESX 5.0 Storage vMotion; QEMU's `blockdev-mirror` in write-blocking
 * mode): one pass of the copier over the whole disk, while guest writes are mirrored, either
 * synchronously or, over a slow link, asynchronously through a bounded queue (ESX 5.1; `mirrorMode`,
 * mirror-queue.ts).
 *
 * Invariant (what is on the target, and when a write may be acknowledged):
 *   For every granule clear in `toCopy` that no copy chunk or mirrored write holds in `lock`, the
 *   target holds exactly what the source holds once the queue's entries overlapping that granule
 *   (queued or in flight) have landed, in the queue's order; with no such entry, it holds it now.
 *   A guest write is acknowledged once the source has it and the target has it too (sync) or its
 *   target form is queued (async). So at switchover, with guest I/O drained, the queue drained
 *   and `toCopy` clean, the target equals the source. The source has every acknowledged write,
 *   in every mode, until the commit.
 *
 * How each guest write keeps it (DESIGN.md, method 3):
 *   - range not yet copied (every granule it touches is dirty in `toCopy`): written to the source
 *     only, holding the range so no chunk copies it meanwhile; its granules stay dirty;
 *   - range overlapping a chunk being copied: waits for that chunk to land (`lock`), then as the
 *     other cases;
 *   - otherwise (already copied, or partly), under the range lock:
 *     - sync: the queue's entries in the range are superseded (queued parts dropped, those in
 *       flight waited for: a sync write never overtakes an older queued one), then written to
 *       source and target and acknowledged only after both;
 *     - async: written to the source, then its target form queued (coalesced with older queued
 *       entries it overlaps), then acknowledged; a full queue makes it wait for room (`async`)
 *       or turn sync (`auto`, which says so in a `mode` event).
 *     Its dirty granules, if any, are still copied later.
 *   The copier clears a chunk's bits before it reads it, under the same lock (copier.ts), and
 *   first supersedes the queue's entries in the run it copies: the copy reads the source, which
 *   has those entries' bytes or newer, so no older queued write lands over the copy.
 *
 * A failed target write, sent now or from the queue, fails the job (the guest's write is
 * acknowledged by the source alone and its granules are marked, so nothing is lost; the queue is
 * discarded and its ranges marked), and later writes go to the source only: a broken destination
 * never fails or slows the guest. A cancel closes the queue the same way.
 */
import type { BlockDevice } from '../../block/device.js';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { RangeLock } from '../../block/range-lock.js';
import type { Method, MethodContext, MethodRun, MirrorStats } from '../method.js';
import { COPY_YIELD_MS_MAX, queueCostOf, writeTarget } from '../mirror-queue.js';
import {
  type GuestMutation,
  MirroredWriteFilter,
  type MirrorQueueSetup,
} from '../mirrored-writes.js';

/**
 * The filter the guest's Switch points at while the mirror runs (reads, flushes and extents go
 * to the source, mirrored-writes.ts); its policy for each guest mutation is the one above.
 */
export class MirrorFilter extends MirroredWriteFilter {
  private readonly toCopy: DirtyBitmap;
  private readonly lock: RangeLock;

  constructor(
    source: BlockDevice,
    target: BlockDevice,
    toCopy: DirtyBitmap,
    lock: RangeLock,
    setup: MirrorQueueSetup,
  ) {
    super(source, target, setup);
    this.toCopy = toCopy;
    this.lock = lock;
  }

  protected override async mutate(mutation: GuestMutation): Promise<void> {
    const { offset, length } = mutation;
    // Every guest mutation holds its range, so no copy chunk overlaps it in time: a chunk being
    // copied here is waited for (DESIGN.md), and a chunk cannot start under a write in flight and
    // carry the old data. Without the hold on source-only writes, a guest rewriting one block
    // keeps re-dirtying it behind every chunk and the copy never finishes.
    const release = await this.lock.acquire(offset, length, this.lockWaits);
    try {
      if (this.isSourceOnly || this.toCopy.isAllDirty(offset, length)) {
        await this.toSourceOnly(mutation);
        return;
      }
      const admission = await this.queue.reserve(queueCostOf([mutation.target]));
      if (admission.way === 'closed') {
        await this.toSourceOnly(mutation);
      } else if (admission.way === 'async') {
        try {
          await mutation.toSource();
        } catch (error) {
          this.queue.cancel(admission);
          this.toCopy.mark(offset, length);
          throw error;
        }
        this.queue.enqueue(admission, [mutation.target]);
      } else {
        await this.toBoth(mutation);
      }
    } finally {
      release();
    }
  }

  protected override forget(offset: number, length: number): void {
    this.toCopy.mark(offset, length);
  }

  /** Not yet copied, or no target: the copy will carry it. */
  private async toSourceOnly(mutation: GuestMutation): Promise<void> {
    // Marked again whatever happens, so a failed write that partly landed is copied too.
    try {
      await mutation.toSource();
    } finally {
      this.toCopy.mark(mutation.offset, mutation.length);
    }
  }

  /** Synchronous: after older queued entries in the range, on both sides. */
  private async toBoth(mutation: GuestMutation): Promise<void> {
    const { offset, length } = mutation;
    const [onSource, onTarget] = await Promise.allSettled([
      mutation.toSource(),
      this.queue.supersede(offset, length).then(() => writeTarget(this.target, mutation.target)),
    ]);
    if (onTarget.status === 'rejected') {
      this.toCopy.mark(offset, length);
      this.failTarget(onTarget.reason);
    }
    if (onSource.status === 'rejected') {
      // The target may hold what the source refused: copy the range again from the source.
      this.toCopy.mark(offset, length);
      throw onSource.reason;
    }
  }
}

export const mirror: Method = (context) => new MirrorRun(context);

class MirrorRun implements MethodRun {
  private readonly context: MethodContext;
  private readonly copy: MirrorCopy;
  private isMirroring = false;

  constructor(context: MethodContext) {
    this.context = context;
    const toCopy = new DirtyBitmap(context.source.size, context.tuning.granularityBytes);
    this.copy = new MirrorCopy(context, toCopy, { isInTotal: true });
  }

  get dirtyBytes(): number {
    return this.copy.dirtyBytes;
  }

  get mirrorStats(): MirrorStats {
    return this.copy.mirrorStats;
  }

  get passes(): number {
    return this.copy.passes;
  }

  /**
   * Marks everything to copy, puts the mirror in the guest's path, and walks the disk once;
   * further walks copy only what writes racing the copy re-marked. May be called again (a VM's
   * other disks converged since): it copies what is dirty now.
   */
  async converge(): Promise<void> {
    if (!this.isMirroring) {
      this.context.markInitial(this.copy.toCopy);
      await this.copy.start();
      this.isMirroring = true;
      this.context.emit({ type: 'phase', phase: 'copy' });
    }
    await this.copy.converge();
  }

  settle(): Promise<void> {
    return this.copy.settle();
  }

  finalCopy(): Promise<void> {
    return this.copy.finalCopy();
  }

  /** The source has every write (mirroring only ever adds the target): nothing to undo. */
  async rollback(): Promise<void> {}

  dispose(): Promise<void> {
    return this.copy.dispose();
  }
}

/**
 * The mirror's filter and its copy passes over `toCopy`: the mirror method's run, and the mirror
 * that finishes a dbt job which could not converge (dbt.ts), started from dbt's dirty set.
 */
export class MirrorCopy {
  passes = 0;
  /** Granules not yet on the target (see the invariant at the top). */
  readonly toCopy: DirtyBitmap;
  private readonly context: MethodContext;
  private readonly lock = new RangeLock();
  private readonly filter: MirrorFilter;
  /** `toCopy`'s bytes are in the progress total already; every later pass adds its own. */
  private isInTotal: boolean;

  constructor(context: MethodContext, toCopy: DirtyBitmap, options: { isInTotal: boolean }) {
    this.context = context;
    this.toCopy = toCopy;
    this.isInTotal = options.isInTotal;
    this.filter = new MirrorFilter(context.source, context.target, toCopy, this.lock, {
      tuning: context.tuning,
      emit: (event) => context.emit(event),
    });
    // A cancelled or failed job is undone: the target gets nothing more, writes go to the source.
    context.signal.addEventListener('abort', () => void this.filter.queue.close(), {
      once: true,
    });
  }

  /** Dirty granules and bytes still queued for the target. */
  get dirtyBytes(): number {
    return this.toCopy.dirtyBytes + this.filter.queue.pendingBytes;
  }

  get mirrorStats(): MirrorStats {
    return this.filter.stats;
  }

  /** Puts the mirror in the guest's path, in place of what was there. */
  async start(): Promise<void> {
    await this.context.interpose(this.filter);
    this.filter.queue.start();
  }

  /** Copies until `toCopy` is clean; rejects at once when a mirrored write failed. */
  async converge(): Promise<void> {
    await Promise.race([this.copyUntilClean(), this.filter.failed]);
  }

  /**
   * With guest I/O drained: the whole queue, then what is still dirty (writes that raced the
   * last chunks, ranges a failure put back).
   */
  /** Before the switchover: nothing more queued (mirror-queue.ts, `settle`). */
  settle(): Promise<void> {
    return this.filter.queue.settle();
  }

  async finalCopy(): Promise<void> {
    await this.lock.waitIdle();
    await this.filter.queue.drain();
    this.filter.throwIfTargetFailed();
    if (!this.toCopy.isClean) await this.copyOnce();
    this.filter.throwIfTargetFailed();
  }

  /** Closes the queue (empty after a switchover) and waits for its writes in flight. */
  dispose(): Promise<void> {
    return this.filter.queue.close();
  }

  private async copyUntilClean(): Promise<void> {
    while (!this.toCopy.isClean) {
      this.passes += 1;
      await this.copyOnce();
      this.filter.throwIfTargetFailed();
    }
  }

  private async copyOnce(): Promise<void> {
    if (!this.isInTotal) this.context.progress.grow(this.toCopy.dirtyBytes);
    this.isInTotal = false;
    const { queue } = this.filter;
    await this.context.copier.copyPass(this.toCopy, {
      lock: this.lock,
      supersede: (offset, length) => queue.supersede(offset, length),
      yieldTo: () => queue.whenQuiet(COPY_YIELD_MS_MAX),
    });
  }
}
