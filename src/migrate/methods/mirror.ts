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
import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from '../../block/device.js';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { errorMessageOf } from '../../util/errors.js';
import { MigrateError, MigrateErrorCode } from '../errors.js';
import type { Method, MethodContext, MethodRun } from '../method.js';
import { RangeLock } from '../range-lock.js';

/** One guest mutation, applied to either side (write, zero or trim). */
type Mutation = (device: BlockDevice) => Promise<void>;

/**
 * The filter the guest's Switch points at while the mirror runs. Reads, flushes and extents go
 * to the source: it is the authority until the switchover commits.
 */
export class MirrorFilter implements BlockDevice {
  /** Set once a target write failed; then every write goes to the source only. */
  targetFailure: MigrateError | undefined;
  private readonly source: BlockDevice;
  private readonly target: BlockDevice;
  private readonly toCopy: DirtyBitmap;
  private readonly lock: RangeLock;
  private readonly onTargetFailure: (error: MigrateError) => void;

  constructor(
    source: BlockDevice,
    target: BlockDevice,
    toCopy: DirtyBitmap,
    lock: RangeLock,
    onTargetFailure: (error: MigrateError) => void,
  ) {
    this.source = source;
    this.target = target;
    this.toCopy = toCopy;
    this.lock = lock;
    this.onTargetFailure = onTargetFailure;
  }

  get size(): number {
    return this.source.size;
  }

  get caps(): BlockCaps {
    return this.source.caps;
  }

  get limits(): BlockLimits {
    return this.source.limits;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.source.read(offset, length);
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.mutate(offset, data.length, (device) =>
      device === this.source ? device.write(offset, data, options) : device.write(offset, data),
    );
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.mutate(offset, length, (device) =>
      device === this.source
        ? device.writeZeroes(offset, length, options)
        : device.writeZeroes(offset, length, { mayTrim: options?.mayTrim ?? false }),
    );
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    // The target's trim may leave anything there, so the mirrored form is a zero: the target
    // must read as the source does, and a trimmed source range reads as zeros on our backends.
    return this.mutate(offset, length, (device) =>
      device === this.source
        ? device.trim(offset, length, options)
        : device.writeZeroes(offset, length, { mayTrim: true }),
    );
  }

  /** Durability of the target is the switchover's flush; the guest's flush is the source's. */
  flush(): Promise<void> {
    return this.source.flush();
  }

  cache(offset: number, length: number): Promise<void> {
    return this.source.cache(offset, length);
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    return this.source.extents(offset, length);
  }

  /** The filter owns the source below it, as every filter in a stack does; not the target. */
  close(): Promise<void> {
    return this.source.close();
  }

  private async mutate(offset: number, length: number, apply: Mutation): Promise<void> {
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

  private failTarget(reason: unknown): void {
    if (this.targetFailure !== undefined) return;
    this.targetFailure = new MigrateError(
      MigrateErrorCode.TargetFailed,
      `a mirrored write to the destination failed: ${errorMessageOf(reason)}`,
      { cause: reason },
    );
    this.onTargetFailure(this.targetFailure);
  }
}

export const mirror: Method = (context) => new MirrorRun(context);

class MirrorRun implements MethodRun {
  passes = 0;
  private readonly context: MethodContext;
  private readonly toCopy: DirtyBitmap;
  private readonly lock = new RangeLock();
  private readonly filter: MirrorFilter;
  private readonly failed: Promise<never>;

  constructor(context: MethodContext) {
    this.context = context;
    this.toCopy = new DirtyBitmap(context.source.size, context.tuning.granularityBytes);
    let fail!: (error: MigrateError) => void;
    this.failed = new Promise<never>((_resolve, reject) => {
      fail = reject;
    });
    this.failed.catch(() => undefined);
    this.filter = new MirrorFilter(context.source, context.target, this.toCopy, this.lock, fail);
  }

  get dirtyBytes(): number {
    return this.toCopy.dirtyBytes;
  }

  /**
   * Marks everything to copy, puts the mirror in the guest's path, and walks the disk once;
   * further walks copy only what writes racing the copy re-marked. May be called again (a VM's
   * other disks converged since): it copies what is dirty now.
   */
  async converge(): Promise<void> {
    if (this.passes === 0) {
      this.toCopy.markAll();
      await this.context.interpose(this.filter);
      this.context.emit({ type: 'mode', mode: 'sync' });
      this.context.emit({ type: 'phase', phase: 'copy' });
    }
    await Promise.race([this.copyUntilClean(), this.failed]);
  }

  /** With guest I/O drained: what is still dirty (writes that raced the last chunks). */
  async finalCopy(): Promise<void> {
    await this.lock.waitIdle();
    this.throwIfTargetFailed();
    if (!this.toCopy.isClean) await this.context.copier.copyPass(this.toCopy, { lock: this.lock });
    this.throwIfTargetFailed();
  }

  /** The source has every write (mirroring only ever adds the target): nothing to undo. */
  async rollback(): Promise<void> {}

  async dispose(): Promise<void> {}

  private async copyUntilClean(): Promise<void> {
    while (!this.toCopy.isClean) {
      if (this.passes > 0) this.context.progress.grow(this.toCopy.dirtyBytes);
      this.passes += 1;
      await this.context.copier.copyPass(this.toCopy, { lock: this.lock });
      this.throwIfTargetFailed();
    }
  }

  private throwIfTargetFailed(): void {
    if (this.filter.targetFailure !== undefined) throw this.filter.targetFailure;
  }
}
