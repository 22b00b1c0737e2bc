/**
 * The `mirror` method (ESX 5.0 Storage vMotion; QEMU's `blockdev-mirror` in write-blocking
 * mode): one pass of the copier over the whole disk, while guest writes are mirrored.
 *
 * Invariant (what is on the target, and when a write may be acknowledged):
 *   For every granule clear in `toCopy` that no copy chunk or mirrored write holds in `lock`, the
 *   target holds exactly what the source holds. So at switchover, with guest I/O drained and
 *   `toCopy` clean, the target equals the source.
 *
 * How each guest write keeps it (DESIGN.md, method 3):
 *   - range not yet copied (every granule it touches is dirty in `toCopy`): written to the source
 *     only, holding the range so no chunk copies it meanwhile; its granules stay dirty;
 *   - range overlapping a chunk being copied: waits for that chunk to land (`lock`), then as the
 *     other cases;
 *   - otherwise (already copied, or partly): written to source and target under the range lock
 *     and acknowledged only after both. Its dirty granules, if any, are still copied later.
 *   The copier clears a chunk's bits before it reads it, under the same lock (copier.ts).
 *
 * A failed target write fails the job (the guest's write is acknowledged by the source alone and
 * its granules are marked, so nothing is lost), and later writes go to the source only: a
 * broken destination never fails or slows the guest.
 */
import type { BlockDevice } from '../../block/device.js';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { RangeLock } from '../../block/range-lock.js';
import type { Method, MethodContext, MethodRun } from '../method.js';
import { MirroredWriteFilter, type Mutation } from '../mirrored-writes.js';

/**
 * The filter the guest's Switch points at while the mirror runs (reads, flushes and extents go
 * to the source, mirrored-writes.ts); its policy for each guest mutation is the one above.
 */
export class MirrorFilter extends MirroredWriteFilter {
  private readonly toCopy: DirtyBitmap;
  private readonly lock: RangeLock;

  constructor(source: BlockDevice, target: BlockDevice, toCopy: DirtyBitmap, lock: RangeLock) {
    super(source, target);
    this.toCopy = toCopy;
    this.lock = lock;
  }

  protected override async mutate(offset: number, length: number, apply: Mutation): Promise<void> {
    // Every guest mutation holds its range, so no copy chunk overlaps it in time: a chunk being
    // copied here is waited for (DESIGN.md), and a chunk cannot start under a write in flight and
    // carry the old data. Without the hold on source-only writes, a guest rewriting one block
    // keeps re-dirtying it behind every chunk and the copy never finishes.
    const release = await this.lock.acquire(offset, length);
    try {
      if (this.targetFailure !== undefined || this.toCopy.isAllDirty(offset, length)) {
        // Not yet copied: the copy will carry it. Marked again whatever happens, so a failed
        // write that partly landed is copied too.
        try {
          await apply(this.source);
        } finally {
          this.toCopy.mark(offset, length);
        }
        return;
      }
      const [onSource, onTarget] = await Promise.allSettled([
        apply(this.source),
        apply(this.target),
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
    } finally {
      release();
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
      this.copy.toCopy.markAll();
      await this.copy.start();
      this.isMirroring = true;
      this.context.emit({ type: 'phase', phase: 'copy' });
    }
    await this.copy.converge();
  }

  finalCopy(): Promise<void> {
    return this.copy.finalCopy();
  }

  /** The source has every write (mirroring only ever adds the target): nothing to undo. */
  async rollback(): Promise<void> {}

  async dispose(): Promise<void> {}
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
    this.filter = new MirrorFilter(context.source, context.target, toCopy, this.lock);
  }

  get dirtyBytes(): number {
    return this.toCopy.dirtyBytes;
  }

  /** Puts the mirror in the guest's path, in place of what was there. */
  async start(): Promise<void> {
    await this.context.interpose(this.filter);
    this.context.emit({ type: 'mode', mode: 'sync' });
  }

  /** Copies until `toCopy` is clean; rejects at once when a mirrored write failed. */
  async converge(): Promise<void> {
    await Promise.race([this.copyUntilClean(), this.filter.failed]);
  }

  /** With guest I/O drained: what is still dirty (writes that raced the last chunks). */
  async finalCopy(): Promise<void> {
    await this.lock.waitIdle();
    this.filter.throwIfTargetFailed();
    if (!this.toCopy.isClean) await this.copyOnce();
    this.filter.throwIfTargetFailed();
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
    await this.context.copier.copyPass(this.toCopy, { lock: this.lock });
  }
}
