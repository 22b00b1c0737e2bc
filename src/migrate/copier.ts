import type { BlockDevice, Extent } from '../block/device.js';
import type { DirtyBitmap } from '../block/dirty-bitmap.js';
import { isBlockError } from '../block/errors.js';
import type { RangeLock } from '../block/range-lock.js';
import { Throttle } from '../block/throttle.js';
import { assert } from '../util/assert.js';
import { errorMessageOf } from '../util/errors.js';
import type { CopyOffload, CopyPath } from './copy-offload.js';
import type { CopyState } from './copy-state.js';
import { cancelledError, MigrateError, MigrateErrorCode } from './errors.js';
import type { GuestFirst } from './guest-first.js';
import type { Progress } from './progress.js';

/**
 * The bulk copier: moves the dirty runs of a bitmap from `source` to `target`, chunk by chunk,
 * several chunks in flight.
 *
 * - Bounded: at most `inFlightMax` chunks of at most `chunkBytes` each (one granule if that is
 *   larger), so buffer memory is at most their product (8 MiB by default). With `guestFirst`,
 *   fewer while the guest's latency says the copy is in its way.
 * - Hole-aware: it asks the source for extents and never reads a hole or a known-zero run; a
 *   zero run, or a chunk that reads as all zeros, is not written where the target is still fresh
 *   (created empty and never written since, per `touched`), since it already reads as zeros
 *   there: a thin target stays thin, a thick one stays allocated from its creation. Where the
 *   target has been written, zeros go as one `writeZeroes` per run.
 * - Throttled: source reads pass a token bucket whose rate `setSpeed` changes while it runs, for
 *   a pass reading another device (`PassOptions.from`) too.
 * - Dirty-tracking rules (STYLE.md): a run's bits are cleared before its extents are asked or its
 *   data read, so a guest write racing the copy re-marks it (the methods mark on completion); a
 *   failed run is marked again.
 * - Chunks are whole granules of the pass's bitmap (the chunk size rounded down to them, at least
 *   one): clearing a chunk clears every granule it touches, so a chunk ending inside a granule
 *   would leave that granule's tail clean and never copied.
 *
 * - Offloaded: given a `CopyOffload` (both images raw files on this host), data runs read from
 *   the source go through the kernel (reflink or copy_file_range) instead of a buffer, after the
 *   same clearing and under the same lock; the throttle is paid all the same. Where the kernel
 *   refuses, the run is read and written here. `onPath` hears each way the first time it is
 *   taken, so the job says which one moved the data.
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
  /** Moves data runs between the source and target files in the kernel (copy-offload.ts). */
  readonly offload?: CopyOffload;
  /** Called the first time each way of copying data carries a run. */
  readonly onPath?: (path: CopyPath) => void;
  /** Sizes the bulk pass's window below `inFlightMax` from the guest's latency (guest-first.ts). */
  readonly guestFirst?: GuestFirst;
  /**
   * A resumable move's persisted state (copy-state.ts): each run copied from the source is
   * reported to it, from before its bits are cleared to after its data landed.
   */
  readonly copyState?: CopyState;
}

export interface PassOptions {
  /** Held over each chunk from before its bits are cleared until its data landed. */
  readonly lock?: RangeLock;
  /**
   * With `lock`: a chunk's runs are read from the bitmap again once its hold is taken, and only
   * the runs still dirty then are cleared and copied. For a bitmap that others clear while they
   * hold the lock (sxm's mirrored writes place granules on the target): the walk picks a chunk
   * before its hold, and a granule placed while the chunk waited must not be copied over.
   */
  readonly recheckUnderLock?: boolean;
  /**
   * With `lock`: called under the chunk's hold for each run it copies, before the run's bits are
   * cleared and its data read. The async mirror drops its queued target writes in the run (the
   * copy carries the source's bytes, which are those or newer) and waits for those in flight,
   * so no older mirrored write lands over the copy (mirror-queue.ts).
   */
  readonly supersede?: (offset: number, length: number) => Promise<void>;
  /**
   * Awaited before each chunk is issued: an async mirror sends its queued writes first, so they
   * do not wait behind copy chunks on a slow link (mirror-queue.ts, `whenQuiet`). Bounded by
   * the caller, so the copy always moves on.
   */
  readonly yieldTo?: () => Promise<void>;
  /** Read from this device instead of the copier's source (a redo log); same size, throttled. */
  readonly from?: BlockDevice;
  /**
   * Every dirty run is data where it is read (a redo log's presence map): no extents are asked.
   * A log's runs are small and scattered, and two lseeks per run would double their cost.
   */
  readonly isDirtyAllData?: boolean;
  /** Granules to leave dirty in this pass (dbt's hot blocks). */
  readonly skip?: DirtyBitmap;
  /** Count copied bytes as progress (default true). */
  readonly countsProgress?: boolean;
}

export const CHUNK_BYTES_DEFAULT = 1024 * 1024;
export const IN_FLIGHT_MAX_DEFAULT = 8;
/** Chunk size while the offload shares extents: a guest write waits at most one clone call. */
const REFLINK_CHUNK_BYTES = 16 * 1024 * 1024;
/** The furthest past a chunk the copier asks for the source's map (see `sourceExtents`). */
const EXTENT_LOOKAHEAD_BYTES = 256 * 1024 * 1024;
/** The longest run `overHole` makes of a hole: one lock hold, one progress step. */
const HOLE_RUN_BYTES_MAX = 1024 * 1024 * 1024;

export class Copier {
  readonly chunkBytes: number;
  readonly inFlightMax: number;
  /** Bytes of data read (source or `from`) and written to the target (not holes, not zeros). */
  copiedBytes = 0;
  /** Of `copiedBytes`, how many each way carried. */
  readonly bytesByPath: Record<CopyPath, number> = {
    reflink: 0,
    copy_file_range: 0,
    'read-write': 0,
  };
  private readonly source: BlockDevice;
  /** A data run of a source seen ahead of the walk (see `sourceExtents`). */
  /** How far past a chunk to ask for the source's map; grows while data runs are long. */
  private lookaheadBytes = 0;
  private knownData: { device: BlockDevice | undefined; offset: number; end: number } = {
    device: undefined,
    offset: 0,
    end: 0,
  };
  private readonly throttled: Throttle;
  /** Every throttle reading now (the source's, a `from` pass's): `setSpeed` changes them all. */
  private readonly throttles = new Set<Throttle>();
  private readonly target: BlockDevice;
  private readonly options: CopierOptions;
  private readonly zeros: Buffer;
  /** The first pass over the source (the bulk copy) is over. */
  private isBulkDone = false;

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
    this.throttles.add(this.throttled);
    // A cancelled job must not wait for tokens: at a low speed a read queued behind the bucket
    // would hold the rollback for seconds. Unlimited releases every waiter now; no new chunk
    // starts once the signal has fired.
    options.signal?.addEventListener('abort', () => this.setSpeed(0), { once: true });
    this.zeros = Buffer.alloc(this.chunkBytes);
  }

  get speedBytesPerSecond(): number {
    return this.throttled.rateBytesPerSecond;
  }

  /** Changes the copy rate at once, for reads already waiting too; 0 is unlimited. */
  setSpeed(bytesPerSecond: number): void {
    for (const throttled of this.throttles) throttled.setRate(bytesPerSecond);
  }

  /**
   * True when the target still reads as zeros over the range: created empty and never written
   * since (by the copier or anyone writing through its target).
   */
  isFresh(offset: number, length: number): boolean {
    return !this.options.touched.isDirty(offset, length);
  }

  /** True when `data` is all zeros (compared a chunk at a time, not byte by byte in JS). */
  isZero(data: Buffer): boolean {
    for (let at = 0; at < data.length; at += this.zeros.length) {
      const end = Math.min(data.length, at + this.zeros.length);
      if (!data.subarray(at, end).equals(this.zeros.subarray(0, end - at))) return false;
    }
    return true;
  }

  /**
   * Copies every run dirty in `bitmap` once, in offset order (runs dirtied again behind the walk
   * stay dirty for the caller's next pass). Resolves when every chunk has landed.
   */
  async copyPass(bitmap: DirtyBitmap, pass: PassOptions = {}): Promise<void> {
    assert(pass.supersede === undefined || pass.lock !== undefined, 'supersede needs the lock');
    if (pass.recheckUnderLock === true) {
      assert(pass.lock !== undefined, 'a recheck under the lock needs the lock');
      assert(pass.skip === undefined, 'a recheck copies every dirty granule: no skip with it');
    }
    const from = pass.from ?? this.source;
    assert(from.size === this.target.size, 'a pass reads a device of the target size');
    const reader = from === this.source ? this.throttled : this.throttle(from);
    const granule = bitmap.granularityBytes;
    const offload = from === this.source ? this.options.offload : undefined;
    // A reflink moves no data: its cost is per call, not per byte, so it takes larger chunks.
    const chunkBytes =
      offload?.path === 'reflink'
        ? Math.max(this.chunkBytes, REFLINK_CHUNK_BYTES)
        : this.chunkBytes;
    const walk: Walk = {
      bitmap,
      pass,
      from,
      reader,
      // A `from` pass reads another device (a redo log): its data is not in the source file.
      offload,
      // Only the bulk pass yields to the guest: later passes (dbt's dirty blocks, a redo log's
      // consolidation, a mirror's re-copies) are how a method converges, and starving them
      // leaves more for the stun.
      isGuestFirst: from === this.source && !this.isBulkDone,
      chunkBytes: Math.max(granule, Math.floor(chunkBytes / granule) * granule),
    };
    try {
      await this.walkChunks(walk);
    } finally {
      if (reader !== this.throttled) this.throttles.delete(reader);
      if (from === this.source) this.isBulkDone = true;
    }
  }

  /** A throttle over `from` at the copier's speed, which `setSpeed` changes until the pass ends. */
  private throttle(from: BlockDevice): Throttle {
    // Never closed: closing a Throttle closes the device below it, which is not the copier's.
    const throttled = new Throttle(from, { bytesPerSecond: this.speedBytesPerSecond });
    this.throttles.add(throttled);
    return throttled;
  }

  /** Issues the chunks, `inFlightMax` at a time, until the walk ends, fails or is cancelled. */
  private async walkChunks(walk: Walk): Promise<void> {
    const window = new Set<Promise<void>>();
    let failure: unknown;
    let cursor = 0;
    for (;;) {
      if (failure === undefined && this.options.signal?.aborted) failure = cancelledError();
      if (failure !== undefined) break;
      if (walk.pass.yieldTo !== undefined) await walk.pass.yieldTo();
      const next = this.nextRun(walk, cursor);
      if (next === null) break;
      let run: Span;
      try {
        run = await this.overHole(walk, next);
      } catch (error) {
        failure ??= error;
        continue;
      }
      cursor = run.offset + run.length;
      const chunk = this.copyChunk(walk, run.offset, run.length).catch((error: unknown) => {
        failure ??= error;
      });
      window.add(chunk);
      void chunk.finally(() => window.delete(chunk));
      while (window.size >= this.windowLimit(walk)) await Promise.race(window);
    }
    await Promise.all(window);
    if (failure !== undefined) throw failure;
  }

  /** Chunks allowed in flight now: in the bulk pass, the guest-first window. */
  private windowLimit(walk: Walk): number {
    const guestFirst = this.options.guestFirst;
    return guestFirst === undefined || !walk.isGuestFirst
      ? this.inFlightMax
      : Math.min(this.inFlightMax, guestFirst.window);
  }

  /** The next dirty run at or after `at`, at most a chunk, not mixing skipped and copied granules. */
  private nextRun(walk: Walk, at: number): Span | null {
    const { bitmap, pass } = walk;
    let cursor = at;
    for (;;) {
      const run = bitmap.nextDirty(cursor, walk.chunkBytes);
      if (run === null || pass.skip === undefined) return run;
      const granule = bitmap.granularityBytes;
      // Walk granule by granule: stop at the first skipped one, or step over skipped ones.
      let end = run.offset;
      const runEnd = run.offset + run.length;
      while (end < runEnd && !pass.skip.isDirty(end, 1))
        end = Math.min(runEnd, (Math.floor(end / granule) + 1) * granule);
      if (end > run.offset) return { offset: run.offset, length: end - run.offset };
      cursor = Math.min(bitmap.sizeBytes, (Math.floor(run.offset / granule) + 1) * granule);
      if (cursor >= bitmap.sizeBytes) return null;
    }
  }

  /**
   * Scale (issue 9 item 4): `run` stretched over the hole the source has at its start, up to
   * `HOLE_RUN_BYTES_MAX` and as far as the bitmap is dirty from there, so a sparse disk costs one
   * run per hole rather than one per chunk: a 1 TiB disk at 1% allocated walked 1M chunks, each
   * with its own extents call, lock, bitmap clear and progress step, and its time grew with the
   * disk's size instead of its data. The probe is only a hint, asked before the run's bits are
   * cleared: `copyRun` clears them and asks the map again, so data a guest wrote meanwhile is
   * copied (`copyRun` splits data into chunks, keeping the memory bound). A run is not stretched
   * where the chunk rule does not hold as is: skipped granules, a redo log, no map.
   */
  private async overHole(walk: Walk, run: Span): Promise<Span> {
    const { from, pass, bitmap } = walk;
    if (run.length < walk.chunkBytes || pass.skip !== undefined || pass.isDirtyAllData === true) {
      return run;
    }
    if (!from.caps.canExtents) return run;
    const window = Math.min(HOLE_RUN_BYTES_MAX, from.size - run.offset);
    let first: Extent | undefined;
    try {
      [first] = await from.extents(run.offset, window, 1);
    } catch (error) {
      throw wrap(MigrateErrorCode.SourceFailed, `mapping the source at ${run.offset}`, error);
    }
    if (first === undefined || first.kind === 'data' || first.offset !== run.offset) return run;
    const holeEnd = Math.min(run.offset + window, first.offset + first.length);
    // Whole granules only (see the class comment), unless the hole runs to the disk's end.
    const granule = bitmap.granularityBytes;
    const end = holeEnd === from.size ? holeEnd : Math.floor(holeEnd / granule) * granule;
    if (end <= run.offset + run.length) return run;
    const dirty = bitmap.nextDirty(run.offset, end - run.offset);
    if (dirty === null || dirty.offset !== run.offset) return run;
    return { offset: run.offset, length: Math.max(run.length, dirty.length) };
  }

  /** Holds the chunk (with a lock), then copies its runs: all of it, or what is dirty still. */
  private async copyChunk(walk: Walk, offset: number, length: number): Promise<void> {
    const { lock, recheckUnderLock } = walk.pass;
    const release = lock === undefined ? undefined : await lock.acquire(offset, length);
    try {
      if (recheckUnderLock !== true) {
        await this.copyRun(walk, offset, length);
        return;
      }
      // Under the hold nothing else changes these granules: each run found dirty now is ours.
      const end = offset + length;
      for (let run = dirtyWithin(walk.bitmap, offset, end); run !== null; ) {
        await this.copyRun(walk, run.offset, run.length);
        run = dirtyWithin(walk.bitmap, run.offset + run.length, end);
      }
    } finally {
      release?.();
    }
  }

  /** Clears the run, copies it extent by extent, marks it again on failure; counts progress. */
  private async copyRun(walk: Walk, offset: number, length: number): Promise<void> {
    await walk.pass.supersede?.(offset, length);
    const state = walk.from === this.source ? this.options.copyState : undefined;
    const token = state?.copyStarting(offset, length);
    walk.bitmap.clear(offset, length);
    try {
      const end = offset + length;
      for (let at = offset; at < end; ) {
        const extents: Extent[] = walk.pass.isDirtyAllData
          ? [{ offset: at, length: end - at, kind: 'data' }]
          : await this.sourceExtents(walk.from, at, end - at);
        for (const extent of extents) {
          // A run stretched over a hole (`overHole`) may find data there now: a chunk at a time.
          for (const piece of chunksOf(extent, walk.chunkBytes)) await this.copyExtent(walk, piece);
        }
        const last = extents[extents.length - 1];
        assert(last !== undefined, 'extents returned nothing');
        at = last.offset + last.length;
      }
    } catch (error) {
      walk.bitmap.mark(offset, length);
      throw error;
    }
    if (token !== undefined) state?.copyLanded(token);
    if (walk.pass.countsProgress !== false) this.options.progress.add(length);
  }

  private async copyExtent(walk: Walk, extent: Extent): Promise<void> {
    const { offset, length } = extent;
    if (extent.kind !== 'data') {
      await this.zeroTarget(offset, length);
      return;
    }
    if (walk.offload !== undefined && (await this.offloaded(walk, walk.offload, offset, length))) {
      return;
    }
    let data: Buffer;
    try {
      data = await walk.reader.read(offset, length);
    } catch (error) {
      throw wrap(MigrateErrorCode.SourceFailed, `reading the source at ${offset}`, error);
    }
    if (this.isZero(data)) {
      await this.zeroTarget(offset, length);
      return;
    }
    try {
      await this.target.write(offset, data);
    } catch (error) {
      throw wrap(MigrateErrorCode.TargetFailed, `writing the destination at ${offset}`, error);
    }
    this.copied(offset, length, 'read-write');
  }

  /**
   * Hands a data run to the kernel; false when it refused (the caller reads and writes it).
   * Paid to the throttle first, as a read would be. Data that reads as zeros is copied as data
   * here, so a thin target's allocation follows the source's map, as `cp --sparse=auto` does.
   */
  private async offloaded(
    walk: Walk,
    offload: CopyOffload,
    offset: number,
    length: number,
  ): Promise<boolean> {
    await walk.reader.admit(length);
    let path: CopyPath;
    try {
      path = await offload.copy(offset, length);
    } catch (error) {
      // The kernel read one file and wrote the other: a full or failing destination is by far
      // the likelier (the guest is still served from the source), and the job says so.
      throw wrap(MigrateErrorCode.TargetFailed, `copying to the destination at ${offset}`, error);
    }
    if (path === 'read-write') return false;
    this.copied(offset, length, path);
    return true;
  }

  /** Counts a data run that landed on the target and marks it written there. */
  private copied(offset: number, length: number, path: CopyPath): void {
    this.options.touched.mark(offset, length);
    this.copiedBytes += length;
    if (this.bytesByPath[path] === 0) this.options.onPath?.(path);
    this.bytesByPath[path] += length;
  }

  /** Zeros a range of the target, unless it is still fresh there (then it reads as zeros). */
  private async zeroTarget(offset: number, length: number): Promise<void> {
    if (this.isFresh(offset, length)) return;
    try {
      await this.target.writeZeroes(offset, length, { mayTrim: true });
    } catch (error) {
      throw wrap(MigrateErrorCode.TargetFailed, `zeroing the destination at ${offset}`, error);
    }
  }

  /** The map of `from` for `[offset, offset+length)`, clipped to it, never empty. */
  private async sourceExtents(
    from: BlockDevice,
    offset: number,
    length: number,
  ): Promise<Extent[]> {
    const end = offset + length;
    const known = this.knownData;
    if (known.device === from && offset >= known.offset && end <= known.end) {
      return [{ offset, length, kind: 'data' }];
    }
    let extents: Extent[];
    let window = length;
    try {
      // While the source shows long data runs (a thick or full disk), ask further past the
      // chunk each time, doubling: the run ahead is then known and the next chunks need no
      // lseek of their own. A sparse source keeps chunk-sized windows, since a large window
      // would walk every small extent in it.
      window = Math.min(from.size - offset, Math.max(length, this.lookaheadBytes));
      extents = from.caps.canExtents
        ? await from.extents(offset, window)
        : [{ offset, length, kind: 'data' }];
    } catch (error) {
      throw wrap(MigrateErrorCode.SourceFailed, `mapping the source at ${offset}`, error);
    }
    const first = extents[0];
    const isLongData =
      first !== undefined &&
      first.kind === 'data' &&
      first.offset + first.length >= offset + window;
    this.lookaheadBytes = isLongData ? Math.min(2 * window, EXTENT_LOOKAHEAD_BYTES) : 0;
    if (first !== undefined && first.kind === 'data' && first.offset + first.length > end) {
      // Safe to remember only "data": a range that turns to holes later still reads right (as
      // zeros); a hole remembered could hide data a guest wrote since.
      this.knownData = { device: from, offset: first.offset, end: first.offset + first.length };
    }
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

interface Span {
  readonly offset: number;
  readonly length: number;
}

/** One pass: its bitmap and options, the device it reads and through which throttle. */
interface Walk {
  readonly bitmap: DirtyBitmap;
  readonly pass: PassOptions;
  /** Asked for extents: the copier's source, or the pass's `from`. */
  readonly from: BlockDevice;
  /** `from`'s data is read through this. */
  readonly reader: Throttle;
  /** Set when `from` is the source and both images are files the kernel can copy between. */
  readonly offload: CopyOffload | undefined;
  /** The window follows the guest's latency (the bulk pass only). */
  readonly isGuestFirst: boolean;
  /** The copier's chunk in whole granules of `bitmap`. */
  readonly chunkBytes: number;
}

/** `extent` as is, or a data extent cut into pieces of at most `chunkBytes`. */
function chunksOf(extent: Extent, chunkBytes: number): Extent[] {
  if (extent.kind !== 'data' || extent.length <= chunkBytes) return [extent];
  const pieces: Extent[] = [];
  const end = extent.offset + extent.length;
  for (let at = extent.offset; at < end; at += chunkBytes) {
    pieces.push({ offset: at, length: Math.min(chunkBytes, end - at), kind: 'data' });
  }
  return pieces;
}

/** The first dirty run of `bitmap` within `[from, end)`, clipped to `end`, or null. */
function dirtyWithin(bitmap: DirtyBitmap, from: number, end: number): Span | null {
  if (from >= end) return null;
  const run = bitmap.nextDirty(from, end - from);
  if (run === null || run.offset >= end) return null;
  return { offset: run.offset, length: Math.min(end, run.offset + run.length) - run.offset };
}

function wrap(code: MigrateErrorCode, what: string, error: unknown): MigrateError {
  if (error instanceof MigrateError) return error;
  const errno = isBlockError(error) ? ` (${error.code})` : '';
  return new MigrateError(code, `${what}: ${errorMessageOf(error)}${errno}`, { cause: error });
}
