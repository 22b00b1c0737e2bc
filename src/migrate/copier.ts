import type { BlockDevice, Extent } from '../block/device.js';
import type { DirtyBitmap } from '../block/dirty-bitmap.js';
import { isBlockError } from '../block/errors.js';
import { Throttle } from '../block/throttle.js';
import { assert } from '../util/assert.js';
import { errorMessageOf } from '../util/errors.js';
import { cancelledError, MigrateError, MigrateErrorCode } from './errors.js';
import type { Progress } from './progress.js';
import type { RangeLock } from './range-lock.js';

/**
 * The bulk copier: moves the dirty runs of a bitmap from `source` to `target`, chunk by chunk,
 * several chunks in flight.
 *
 * - Bounded: at most `inFlightMax` chunks of at most `chunkBytes` each, so buffer memory is at
 *   most their product (8 MiB by default).
 * - Hole-aware: it asks the source for extents and never reads a hole or a known-zero run; a
 *   zero run, or a chunk that reads as all zeros, is not written where the target is still fresh
 *   (created empty and never written since, per `touched`), since it already reads as zeros
 *   there: a thin target stays thin, a thick one stays allocated from its creation. Where the
 *   target has been written, zeros go as one `writeZeroes` per run.
 * - Throttled: source reads pass a token bucket whose rate `setSpeed` changes while it runs.
 * - Dirty-tracking rules (STYLE.md): a run's bits are cleared before its extents are asked or its
 *   data read, so a guest write racing the copy re-marks it (the methods mark on completion); a
 *   failed chunk is marked again.
 *
 * A pass stops issuing chunks at the first failure or cancellation, waits for the chunks in
 * flight, and rejects with `ERR_TARGET_FAILED`, `ERR_SOURCE_FAILED` or `ERR_CANCELLED`.
 */
export interface CopierOptions {
  /** Default 1 MiB. */
  readonly chunkBytes?: number;
  /** Chunks in flight; default 8. */
  readonly inFlightMax?: number;
  /** Bytes per second read from the source; 0 (default) is unlimited. */
  readonly speedBytesPerSecond?: number;
  /** Target granules written since the target was created; the copier's own writes mark it too. */
  readonly touched: DirtyBitmap;
  readonly progress: Progress;
  readonly signal?: AbortSignal;
}

export interface PassOptions {
  /** Held over each chunk from before its bits are cleared until its data landed. */
  readonly lock?: RangeLock;
  /** Granules to leave dirty in this pass (dbt's hot blocks). */
  readonly skip?: DirtyBitmap;
  /** Count copied bytes as progress (default true). */
  readonly countsProgress?: boolean;
}

export const CHUNK_BYTES_DEFAULT = 1024 * 1024;
export const IN_FLIGHT_MAX_DEFAULT = 8;

export class Copier {
  readonly chunkBytes: number;
  readonly inFlightMax: number;
  /** Bytes of data read from the source and written to the target (not holes, not skipped zeros). */
  copiedBytes = 0;
  private readonly source: BlockDevice;
  private readonly throttled: Throttle;
  private readonly target: BlockDevice;
  private readonly options: CopierOptions;
  private readonly zeros: Buffer;

  constructor(source: BlockDevice, target: BlockDevice, options: CopierOptions) {
    assert(source.size === target.size, 'copier source and target differ in size');
    this.source = source;
    this.target = target;
    this.options = options;
    this.chunkBytes = options.chunkBytes ?? CHUNK_BYTES_DEFAULT;
    this.inFlightMax = options.inFlightMax ?? IN_FLIGHT_MAX_DEFAULT;
    assert(this.chunkBytes > 0 && this.inFlightMax > 0, 'copier chunk and window are positive');
    // Never closed: closing a Throttle closes the device below it, which is not the copier's.
    this.throttled = new Throttle(source, { bytesPerSecond: options.speedBytesPerSecond ?? 0 });
    this.zeros = Buffer.alloc(this.chunkBytes);
  }

  get speedBytesPerSecond(): number {
    return this.throttled.rateBytesPerSecond;
  }

  /** Changes the copy rate at once, for reads already waiting too; 0 is unlimited. */
  setSpeed(bytesPerSecond: number): void {
    this.throttled.setRate(bytesPerSecond);
  }

  /**
   * Copies every run dirty in `bitmap` once, in offset order (runs dirtied again behind the walk
   * stay dirty for the caller's next pass). Resolves when every chunk has landed.
   */
  async copyPass(bitmap: DirtyBitmap, pass: PassOptions = {}): Promise<void> {
    const window = new Set<Promise<void>>();
    let failure: unknown;
    let cursor = 0;
    for (;;) {
      if (failure === undefined && this.options.signal?.aborted) failure = cancelledError();
      if (failure !== undefined) break;
      const run = this.nextRun(bitmap, cursor, pass.skip);
      if (run === null) break;
      cursor = run.offset + run.length;
      const chunk = this.copyChunk(bitmap, run.offset, run.length, pass).catch((error: unknown) => {
        failure ??= error;
      });
      window.add(chunk);
      void chunk.finally(() => window.delete(chunk));
      if (window.size >= this.inFlightMax) await Promise.race(window);
    }
    await Promise.all(window);
    if (failure !== undefined) throw failure;
  }

  /** The next dirty run at or after `from`, at most a chunk, not mixing skipped and copied granules. */
  private nextRun(
    bitmap: DirtyBitmap,
    from: number,
    skip: DirtyBitmap | undefined,
  ): { offset: number; length: number } | null {
    let cursor = from;
    for (;;) {
      const run = bitmap.nextDirty(cursor, this.chunkBytes);
      if (run === null || skip === undefined) return run;
      const granule = bitmap.granularityBytes;
      // Walk granule by granule: stop at the first skipped one, or step over skipped ones.
      let end = run.offset;
      const runEnd = run.offset + run.length;
      while (end < runEnd && !skip.isDirty(end, 1))
        end = Math.min(runEnd, (Math.floor(end / granule) + 1) * granule);
      if (end > run.offset) return { offset: run.offset, length: end - run.offset };
      cursor = Math.min(bitmap.sizeBytes, (Math.floor(run.offset / granule) + 1) * granule);
      if (cursor >= bitmap.sizeBytes) return null;
    }
  }

  private async copyChunk(
    bitmap: DirtyBitmap,
    offset: number,
    length: number,
    pass: PassOptions,
  ): Promise<void> {
    const release = pass.lock === undefined ? undefined : await pass.lock.acquire(offset, length);
    bitmap.clear(offset, length);
    try {
      let at = offset;
      const end = offset + length;
      while (at < end) {
        const extents = await this.sourceExtents(at, end - at);
        for (const extent of extents) await this.copyExtent(extent);
        const last = extents[extents.length - 1];
        assert(last !== undefined, 'extents returned nothing');
        at = last.offset + last.length;
      }
    } catch (error) {
      bitmap.mark(offset, length);
      throw error;
    } finally {
      release?.();
    }
    if (pass.countsProgress !== false) this.options.progress.add(length);
  }

  private async copyExtent(extent: Extent): Promise<void> {
    const { offset, length } = extent;
    if (extent.kind !== 'data') {
      await this.zeroTarget(offset, length);
      return;
    }
    let data: Buffer;
    try {
      data = await this.throttled.read(offset, length);
    } catch (error) {
      throw wrap(MigrateErrorCode.SourceFailed, `reading the source at ${offset}`, error);
    }
    if (data.equals(this.zeros.subarray(0, length))) {
      await this.zeroTarget(offset, length);
      return;
    }
    try {
      await this.target.write(offset, data);
    } catch (error) {
      throw wrap(MigrateErrorCode.TargetFailed, `writing the destination at ${offset}`, error);
    }
    this.options.touched.mark(offset, length);
    this.copiedBytes += length;
  }

  /** Zeros a range of the target, unless it is still fresh there (then it reads as zeros). */
  private async zeroTarget(offset: number, length: number): Promise<void> {
    if (!this.options.touched.isDirty(offset, length)) return;
    try {
      await this.target.writeZeroes(offset, length, { mayTrim: true });
    } catch (error) {
      throw wrap(MigrateErrorCode.TargetFailed, `zeroing the destination at ${offset}`, error);
    }
  }

  /** The source's map for `[offset, offset+length)`, clipped to it, never empty. */
  private async sourceExtents(offset: number, length: number): Promise<Extent[]> {
    let extents: Extent[];
    try {
      extents = this.source.caps.canExtents
        ? await this.source.extents(offset, length)
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
