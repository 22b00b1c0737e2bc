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
 *   target holds exactly what the source holds. A guest write is acknowledged only after both
 *   sides have it (or the target has failed, see below). So at switchover, with guest I/O drained
 *   and `toCopy` clean, the target equals the source.
 *
 * How it is kept:
 *   - Every guest write, zero and trim holds its granule span in `lock` and goes to both sides at
 *     once. Placement is exact at granule level: where it covers a granule still in `toCopy` only
 *     in part, the rest of that granule is read from the source and written to the target under
 *     the same hold, so the whole granule is right before it leaves `toCopy`.
 *   - The background copy holds each chunk in `lock`, and only then picks the granules still in
 *     `toCopy`: a granule placed while the chunk waited for the lock is not touched. This is why
 *     the method has its own copy loop instead of `Copier.copyPass`, which picks a chunk's range
 *     before it takes the lock.
 *   - A write the source refused, or whose target side is not whole, goes back into `toCopy`, so
 *     the next walk (or `finalCopy`) copies the source's content there again.
 *   - Holes: a zero or hole run is written only where the target may have been written
 *     (`touched`); elsewhere the fresh target already reads as zeros, so a thin target stays thin.
 *
 * A failed target write fails the job with `ERR_TARGET_FAILED`; the guest's write is still
 * acknowledged by the source, and later writes go to the source only: a broken destination never
 * fails or slows the guest. The source always has every write, so rollback has nothing to undo.
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
import { isBlockError } from '../../block/errors.js';
import { Throttle } from '../../block/throttle.js';
import { assert } from '../../util/assert.js';
import { errorMessageOf } from '../../util/errors.js';
import { cancelledError, MigrateError, MigrateErrorCode } from '../errors.js';
import type { Method, MethodContext, MethodRun } from '../method.js';
import type { Progress } from '../progress.js';
import { RangeLock } from '../range-lock.js';

/** One guest mutation, applied to either side (write, zero or trim). */
type Mutation = (device: BlockDevice) => Promise<void>;

interface Span {
  readonly offset: number;
  readonly length: number;
}

/** The part of a partly written granule that a placement copies from the source. */
interface Fill extends Span {
  /** The target was never written here, so it reads as zeros already. */
  readonly isFresh: boolean;
}

/** What the filter and the background copy share; every change to `toCopy` is made here. */
export class SxmState {
  /** Granules not yet on the target: all at the snapshot; cleared when placed or copied. */
  readonly toCopy: DirtyBitmap;
  /** Target granules written (or tried) since it was created; elsewhere it reads as zeros. */
  readonly touched: DirtyBitmap;
  /** Held over each mirrored write's granule span and each copy chunk. */
  readonly lock = new RangeLock();
  /** A granule of zeros, to recognise zero data without scanning byte by byte in JS. */
  readonly zeros: Buffer;
  private readonly progress: Progress;

  constructor(sizeBytes: number, granularityBytes: number, progress: Progress) {
    this.toCopy = new DirtyBitmap(sizeBytes, granularityBytes);
    this.touched = new DirtyBitmap(sizeBytes, granularityBytes);
    this.zeros = Buffer.alloc(granularityBytes);
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

  isZero(data: Buffer): boolean {
    for (let at = 0; at < data.length; at += this.zeros.length) {
      const end = Math.min(data.length, at + this.zeros.length);
      if (!data.subarray(at, end).equals(this.zeros.subarray(0, end - at))) return false;
    }
    return true;
  }
}

/**
 * The filter the guest's Switch points at from the snapshot on. Reads, flushes and extents go to
 * the source: it is the authority until the switchover commits.
 */
export class SxmFilter implements BlockDevice {
  /** Set once a target write failed; then every write goes to the source only. */
  targetFailure: MigrateError | undefined;
  private readonly source: BlockDevice;
  private readonly target: BlockDevice;
  private readonly state: SxmState;
  private readonly onTargetFailure: (error: MigrateError) => void;

  constructor(
    source: BlockDevice,
    target: BlockDevice,
    state: SxmState,
    onTargetFailure: (error: MigrateError) => void,
  ) {
    this.source = source;
    this.target = target;
    this.state = state;
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

  /**
   * Applies a guest mutation to both sides under the granule span's hold and acknowledges after
   * both; places its granules only once the target side (fills included) landed whole. Rejects
   * with the source's error if the source refused it (the granules then go back into `toCopy`,
   * since the target may hold what the source does not).
   */
  private async mutate(offset: number, length: number, apply: Mutation): Promise<void> {
    if (this.targetFailure !== undefined) return apply(this.source);
    const span = this.state.granuleSpan(offset, length);
    const release = await this.state.lock.acquire(span.offset, span.length);
    try {
      if (this.targetFailure !== undefined) return await apply(this.source);
      const fills = this.edgeFills(offset, length, span);
      this.state.touched.mark(offset, length);
      const [onSource, onTarget] = await Promise.allSettled([
        apply(this.source),
        this.placeOnTarget(apply, fills),
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
    } finally {
      release();
    }
  }

  /**
   * The parts of the span's first and last granules that the mutation leaves out, where those
   * granules are not placed yet: without them the target's granule would mix the mutation with
   * zeros (or stale data) while `toCopy` says it is done. Computed before the mutation marks
   * `touched`, so `isFresh` describes the target as it was.
   */
  private edgeFills(offset: number, length: number, span: Span): Fill[] {
    const { toCopy, touched } = this.state;
    const end = offset + length;
    const spanEnd = span.offset + span.length;
    const fills: Fill[] = [];
    if (span.offset < offset && toCopy.isDirty(span.offset, 1)) {
      const fill = { offset: span.offset, length: offset - span.offset };
      fills.push({ ...fill, isFresh: !touched.isDirty(fill.offset, fill.length) });
    }
    if (end < spanEnd && toCopy.isDirty(end, 1)) {
      const fill = { offset: end, length: spanEnd - end };
      fills.push({ ...fill, isFresh: !touched.isDirty(fill.offset, fill.length) });
    }
    return fills;
  }

  /**
   * The target side of a mutation: the mutation itself and the edge fills, all settled before
   * it returns (the hold must outlive every request it covers). Resolves false when a fill could
   * not read the source, so the span is not whole on the target; rejects on a target failure.
   */
  private async placeOnTarget(apply: Mutation, fills: readonly Fill[]): Promise<boolean> {
    const results = await Promise.allSettled([
      apply(this.target),
      ...fills.map((fill) => this.fill(fill)),
    ]);
    for (const result of results) if (result.status === 'rejected') throw result.reason;
    return results.every((result) => result.status === 'fulfilled' && result.value !== false);
  }

  /** Copies one fill from the source to the target; false if the source could not be read. */
  private async fill(fill: Fill): Promise<boolean> {
    let data: Buffer;
    try {
      data = await this.source.read(fill.offset, fill.length);
    } catch {
      // Not the guest's failure: the granule stays in `toCopy` and the copy carries it later.
      return false;
    }
    if (!this.state.isZero(data)) {
      await this.target.write(fill.offset, data);
    } else if (!fill.isFresh) {
      await this.target.writeZeroes(fill.offset, fill.length, { mayTrim: true });
    }
    return true;
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

/**
 * The background copy of the frozen snapshot: walks `toCopy` in offset order, at most
 * `inFlightMax` chunks of at most `chunkBytes` in flight (the job's copier's settings), each held
 * in `lock` from before it looks at `toCopy` until its data landed. Reads pass a token bucket
 * that follows the job's copy speed (`Copier.setSpeed`); data copied counts in
 * `copier.copiedBytes`, so the job reports it.
 */
class SnapshotCopy {
  private readonly context: MethodContext;
  private readonly state: SxmState;
  private readonly isTargetFailed: () => boolean;
  private readonly chunkBytes: number;
  /** Never closed: closing a Throttle closes the device below it, which is not ours. */
  private readonly throttled: Throttle;

  constructor(context: MethodContext, state: SxmState, isTargetFailed: () => boolean) {
    this.context = context;
    this.state = state;
    this.isTargetFailed = isTargetFailed;
    const granule = state.toCopy.granularityBytes;
    // Whole granules, so that a chunk's hold covers every granule it copies, entirely.
    this.chunkBytes = Math.max(granule, Math.floor(context.copier.chunkBytes / granule) * granule);
    this.throttled = new Throttle(context.source, {
      bytesPerSecond: context.copier.speedBytesPerSecond,
    });
  }

  /**
   * Copies every granule in `toCopy` once (granules put back behind the walk wait for the next
   * walk). Stops issuing chunks at the first failure, cancellation or target failure, waits for
   * those in flight, and rejects with the first error (`ERR_CANCELLED`, `ERR_SOURCE_FAILED` or
   * `ERR_TARGET_FAILED`); after a target failure seen by the filter it resolves, and the run
   * reports that failure.
   */
  async walk(): Promise<void> {
    const window = new Set<Promise<void>>();
    let failure: unknown;
    let cursor = 0;
    for (;;) {
      if (failure === undefined && this.context.signal.aborted) failure = cancelledError();
      if (failure !== undefined || this.isTargetFailed()) break;
      const run = this.state.toCopy.nextDirty(cursor, this.chunkBytes);
      if (run === null) break;
      cursor = run.offset + run.length;
      const chunk = this.copyChunk(run.offset, run.length).catch((error: unknown) => {
        failure ??= error;
      });
      window.add(chunk);
      void chunk.finally(() => window.delete(chunk));
      if (window.size >= this.context.copier.inFlightMax) await Promise.race(window);
    }
    await Promise.all(window);
    if (failure !== undefined) throw failure;
  }

  /**
   * Holds the chunk, then copies only the runs still in `toCopy`: a mirrored write may have placed
   * granules here between the walk's pick and the hold, and those must not be overwritten. Under
   * the hold nothing else changes these granules, so each run leaves `toCopy` once it landed.
   */
  private async copyChunk(offset: number, length: number): Promise<void> {
    const release = await this.state.lock.acquire(offset, length);
    try {
      const end = offset + length;
      for (let run = this.nextRun(offset, end); run !== null; ) {
        await this.copyRun(run.offset, run.length);
        this.state.place(run.offset, run.length);
        run = this.nextRun(run.offset + run.length, end);
      }
    } finally {
      release();
    }
  }

  /** The next run in `toCopy` within `[from, end)`, or null. */
  private nextRun(from: number, end: number): Span | null {
    if (from >= end) return null;
    const run = this.state.toCopy.nextDirty(from, end - from);
    if (run === null || run.offset >= end) return null;
    return { offset: run.offset, length: Math.min(end, run.offset + run.length) - run.offset };
  }

  private async copyRun(offset: number, length: number): Promise<void> {
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const extents = await this.sourceExtents(at, end - at);
      for (const extent of extents) await this.copyExtent(extent);
      const last = extents[extents.length - 1];
      assert(last !== undefined, 'extents returned nothing');
      at = last.offset + last.length;
    }
  }

  private async copyExtent(extent: Extent): Promise<void> {
    const { offset, length } = extent;
    if (extent.kind !== 'data') {
      await this.zeroTarget(offset, length);
      return;
    }
    this.followSpeed();
    let data: Buffer;
    try {
      data = await this.throttled.read(offset, length);
    } catch (error) {
      throw wrap(MigrateErrorCode.SourceFailed, `reading the source at ${offset}`, error);
    }
    if (this.state.isZero(data)) {
      await this.zeroTarget(offset, length);
      return;
    }
    this.state.touched.mark(offset, length);
    try {
      await this.context.target.write(offset, data);
    } catch (error) {
      throw wrap(MigrateErrorCode.TargetFailed, `writing the destination at ${offset}`, error);
    }
    this.context.copier.copiedBytes += length;
  }

  /** Zeros a range of the target, unless it is still fresh there (then it reads as zeros). */
  private async zeroTarget(offset: number, length: number): Promise<void> {
    if (!this.state.touched.isDirty(offset, length)) return;
    try {
      await this.context.target.writeZeroes(offset, length, { mayTrim: true });
    } catch (error) {
      throw wrap(MigrateErrorCode.TargetFailed, `zeroing the destination at ${offset}`, error);
    }
  }

  /** The job's speed may change while we copy (`Migration.setSpeed` sets it on the copier). */
  private followSpeed(): void {
    const speed = this.context.copier.speedBytesPerSecond;
    if (this.throttled.rateBytesPerSecond !== speed) this.throttled.setRate(speed);
  }

  /** The source's map for `[offset, offset+length)`, clipped to it, never empty. */
  private async sourceExtents(offset: number, length: number): Promise<Extent[]> {
    const source = this.context.source;
    let extents: Extent[];
    try {
      extents = source.caps.canExtents
        ? await source.extents(offset, length)
        : [{ offset, length, kind: 'data' }];
    } catch (error) {
      throw wrap(MigrateErrorCode.SourceFailed, `mapping the source at ${offset}`, error);
    }
    const end = offset + length;
    const clipped: Extent[] = [];
    for (const extent of extents) {
      if (extent.offset >= end) break;
      const length = Math.min(end, extent.offset + extent.length) - extent.offset;
      clipped.push({ offset: extent.offset, length, kind: extent.kind });
    }
    assert(clipped.length > 0 && clipped[0]?.offset === offset, 'extents must start at offset');
    return clipped;
  }
}

function wrap(code: MigrateErrorCode, what: string, error: unknown): MigrateError {
  if (error instanceof MigrateError) return error;
  const errno = isBlockError(error) ? ` (${error.code})` : '';
  return new MigrateError(code, `${what}: ${errorMessageOf(error)}${errno}`, { cause: error });
}

export const sxm: Method = (context) => new SxmRun(context);

class SxmRun implements MethodRun {
  passes = 0;
  private readonly context: MethodContext;
  private readonly state: SxmState;
  private readonly filter: SxmFilter;
  private readonly copy: SnapshotCopy;
  private readonly failed: Promise<never>;
  private isMirroring = false;
  /** The copy walking now, if any: `dispose` waits for it, so no chunk outlives the job. */
  private copying: Promise<void> | undefined;

  constructor(context: MethodContext) {
    this.context = context;
    const { size } = context.source;
    this.state = new SxmState(size, context.tuning.granularityBytes, context.progress);
    let fail!: (error: MigrateError) => void;
    this.failed = new Promise<never>((_resolve, reject) => {
      fail = reject;
    });
    this.failed.catch(() => undefined);
    this.filter = new SxmFilter(context.source, context.target, this.state, fail);
    this.copy = new SnapshotCopy(
      context,
      this.state,
      () => this.filter.targetFailure !== undefined,
    );
  }

  get dirtyBytes(): number {
    return this.state.toCopy.dirtyBytes;
  }

  /**
   * The first call takes the snapshot (everything to copy, the mirror in the guest's path) and
   * copies it; resolves once every granule is placed or copied. Called again (the VM's later
   * disks converged since), it copies only what went back into `toCopy`.
   */
  async converge(): Promise<void> {
    if (!this.isMirroring) {
      this.state.toCopy.markAll();
      await this.context.interpose(this.filter);
      this.isMirroring = true;
      this.context.emit({ type: 'mode', mode: 'sync' });
      this.context.emit({ type: 'phase', phase: 'copy' });
    }
    this.copying = this.copyUntilClean();
    await Promise.race([this.copying, this.failed]);
  }

  /** With guest I/O drained: only granules a failed mirrored write put back, if any. */
  async finalCopy(): Promise<void> {
    await this.state.lock.waitIdle();
    this.throwIfTargetFailed();
    if (!this.state.toCopy.isClean) await this.copy.walk();
    this.throwIfTargetFailed();
    assert(this.state.toCopy.isClean, 'sxm: a walk with the guest drained leaves nothing to copy');
  }

  /** The source has every write (mirroring only ever adds the target): nothing to undo. */
  async rollback(): Promise<void> {}

  /** Waits for a copy still walking after a failure (the job's signal has stopped it by now). */
  async dispose(): Promise<void> {
    await this.copying?.catch(() => undefined);
  }

  private async copyUntilClean(): Promise<void> {
    while (!this.state.toCopy.isClean) {
      this.passes += 1;
      await this.copy.walk();
      this.throwIfTargetFailed();
    }
  }

  private throwIfTargetFailed(): void {
    if (this.filter.targetFailure !== undefined) throw this.filter.targetFailure;
  }
}
