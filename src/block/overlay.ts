import { assert } from '../util/assert.js';
import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from './device.js';
import { DirtyBitmap } from './dirty-bitmap.js';
import { BlockError, BlockErrorCode } from './errors.js';
import { RangeLock } from './range-lock.js';

/**
 * A stack of redo logs over a frozen base (ESX 3.5's snapshot delta disks; a QEMU backing chain
 * of overlays; nbdkit's `cow` filter, with several overlays):
 *
 *   guest → Overlay → newest log → … → oldest log → base
 *
 * Invariants:
 * - Writes, zeroes and trims go to the newest log only. Nothing below the newest log is written
 *   through the Overlay: older logs and the base are frozen.
 * - A log holds whole granules. A granule is marked in its log's `present` only after its whole
 *   new content landed there; a write that covers a granule partly is copy-on-write (read the
 *   granule through the chain, lay the new bytes over it, write all of it). Zeroes and trims are
 *   written as zero data, never as `writeZeroes` (which may punch a hole and lose presence). So a
 *   log's allocated extents equal its presence map, on any backend that allocates in units no
 *   larger than a granule (a sparse file: 4 KiB blocks): a crashed host that lost the bitmaps can
 *   replay a log from its extents alone.
 * - Reads take each granule from the newest log that holds it, else from the base.
 * - Mutations touching a common granule run one after another (`lock`, held over their whole
 *   granules), so two partial writes to different bytes of one granule both survive their
 *   read-modify-writes. Reads take no lock: a granule is marked present only once its log holds
 *   it whole, and until then the layer below holds the same bytes outside the range being written.
 *
 * Callers change the chain only where the guest cannot race them: `pushLog` with guest I/O held
 * and drained (asserted: no mutation in flight), so no write straddles two logs; `dropOldestLog`
 * once that log's contents are in the base; `rebase` onto a device equal to the old base.
 */
export interface RedoLog {
  readonly device: BlockDevice;
  /** The granules this log holds, whole. */
  readonly present: DirtyBitmap;
}

export interface OverlayOptions {
  readonly granularityBytes: number;
  /**
   * Called on every failed write, zero, trim or flush (the guest's request fails with the same
   * error). A failed write leaves its granules unmarked, so reads keep the older content.
   */
  readonly onFailure?: (error: unknown) => void;
}

/** Largest single write to a log; also the size of the shared zero buffer. */
const PIECE_BYTES_MAX = 1024 * 1024;

/** The caps of every overlay but `isReadOnly`, which is the frozen base's. */
const OVERLAY_CAPS: Omit<BlockCaps, 'isReadOnly'> = {
  canFlush: true,
  fua: 'emulate',
  // Zeros are written as data (see above), so zeroing is never faster than writing.
  zero: 'emulate',
  trim: 'emulate',
  canExtents: true,
  isMultiConnSafe: true,
};

/** New bytes of a mutation for `[at, at + length)`, a range inside it. */
type Bytes = (at: number, length: number) => Buffer;

export class Overlay implements BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly granularityBytes: number;
  private base: BlockDevice;
  /** Oldest first; never empty. */
  private readonly chain: RedoLog[] = [];
  private readonly lock = new RangeLock();
  /** Logs (in the chain or dropped from it) that completed a write since their last flush. */
  private readonly unflushed = new Set<BlockDevice>();
  private readonly onFailure: (error: unknown) => void;
  private mutationsInFlight = 0;
  private zeros: Buffer | undefined;
  private isClosed = false;

  /** `base` and `firstLog` stay the caller's: the Overlay never closes them (see `close`). */
  constructor(base: BlockDevice, firstLog: BlockDevice, options: OverlayOptions) {
    const granule = options.granularityBytes;
    assert(Number.isSafeInteger(granule) && granule > 0, 'overlay granularity is positive');
    this.size = base.size;
    // Fixed at construction: after `rebase` the base is the destination, which is writable, but the
    // guest's disk is read-only or not as the source was.
    this.caps = { ...OVERLAY_CAPS, isReadOnly: base.caps.isReadOnly };
    this.base = base;
    this.granularityBytes = granule;
    this.onFailure = options.onFailure ?? (() => undefined);
    this.pushLog(firstLog);
  }

  get limits(): BlockLimits {
    const base = this.base.limits;
    return {
      minimumBytes: base.minimumBytes,
      preferredBytes: Math.max(base.preferredBytes, this.granularityBytes),
      maximumBytes: base.maximumBytes,
      inFlightMax: Math.min(base.inFlightMax, this.newestLog.device.limits.inFlightMax),
    };
  }

  /** The chain's logs, oldest first (the newest takes the writes). */
  get logs(): readonly RedoLog[] {
    return this.chain;
  }

  get newestLog(): RedoLog {
    const newest = this.chain[this.chain.length - 1];
    assert(newest !== undefined, 'an overlay always has a log');
    return newest;
  }

  /**
   * Makes `device` (empty, of the overlay's size) the newest log: writes go to it from now on.
   * Precondition: guest I/O held and drained, so no mutation is in flight (asserted).
   */
  pushLog(device: BlockDevice): RedoLog {
    assert(!this.isClosed, 'overlay is closed');
    assert(device.size === this.size, 'a redo log has the size of the disk');
    assert(this.mutationsInFlight === 0, 'pushLog with guest writes in flight: hold them first');
    assert(device.limits.maximumBytes >= this.granularityBytes, 'a log takes a granule at once');
    const log: RedoLog = { device, present: new DirtyBitmap(this.size, this.granularityBytes) };
    this.chain.push(log);
    return log;
  }

  /**
   * Removes the oldest log from the read chain and returns it. Precondition: its contents are in
   * the base already, and it is not the newest (asserted). A guest flush still covers it.
   */
  dropOldestLog(): RedoLog {
    assert(this.chain.length >= 2, 'the newest log takes the writes and cannot be dropped');
    const oldest = this.chain.shift();
    assert(oldest !== undefined, 'chain is not empty');
    return oldest;
  }

  /** Reads below the logs go to `base` from now on. Precondition: it reads as the old base. */
  rebase(base: BlockDevice): void {
    assert(base.size === this.size, 'a new base has the size of the disk');
    this.base = base;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    return this.readChain(offset, length);
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.mutate(offset, data.length, options?.fua === true, (at, length) =>
      data.subarray(at - offset, at - offset + length),
    );
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    if (options?.fastOnly) {
      throw new BlockError(BlockErrorCode.ENOTSUP, 'the overlay writes zeros as data');
    }
    return this.mutate(offset, length, options?.fua === true, this.zeroBytes);
  }

  /** Stored as zeros: the contract leaves trimmed bytes unspecified, and zeros are what our backends read. */
  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.mutate(offset, length, options?.fua === true, this.zeroBytes);
  }

  /** Makes every write completed before the call durable in its log; the base is never written. */
  async flush(): Promise<void> {
    this.checkOpen();
    const devices = [...this.unflushed];
    this.unflushed.clear();
    try {
      await settleAll(devices.map((device) => device.flush()));
    } catch (error) {
      for (const device of devices) this.unflushed.add(device);
      this.onFailure(error);
      throw error;
    }
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkOpen();
    const runs = this.layerRuns(offset, length);
    await settleAll(runs.map((run) => run.device.cache(run.offset, run.length)));
  }

  /** Granules held by any log are `data`; the rest is what the base says. May answer a prefix. */
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkOpen();
    const end = Math.min(this.size, offset + length);
    const out: Extent[] = [];
    for (const run of this.granuleRuns(offset, end, (at) => this.isInAnyLog(at))) {
      if (run.key) {
        out.push({ offset: run.offset, length: run.length, kind: 'data' });
        continue;
      }
      const below = await this.baseExtents(run.offset, run.length);
      out.push(...below);
      const last = below[below.length - 1];
      assert(last !== undefined, 'base extents are never empty');
      if (last.offset + last.length < run.offset + run.length) break;
    }
    return out;
  }

  /**
   * Refuses every later call with ESHUTDOWN and closes nothing below. The base is the source and
   * later the destination, and neither is the Overlay's: the migration runner re-points the guest's
   * Switch back to the source at rollback and on to the destination at switchover (it never closes
   * the Overlay), and the agent closes both stacks. The logs belong to the method run that created
   * them, which removes them once nothing can need them. So a Switch closed at agent shutdown while
   * the Overlay is interposed leaves the rest to their owners.
   */
  async close(): Promise<void> {
    this.isClosed = true;
  }

  /** Reads through the chain; one device's read as it is when a single layer holds the range. */
  private async readChain(offset: number, length: number): Promise<Buffer> {
    const runs = this.layerRuns(offset, length);
    const only = runs[0];
    if (runs.length === 1 && only !== undefined) return only.device.read(offset, length);
    const out = Buffer.allocUnsafe(length);
    await settleAll(
      runs.map(async (run) => {
        const data = await run.device.read(run.offset, run.length);
        data.copy(out, run.offset - offset);
      }),
    );
    return out;
  }

  /**
   * Applies one guest mutation to the newest log: whole granules written straight from `bytes`,
   * partial head and tail granules copy-on-write, all under the granule lock. FUA flushes the log.
   */
  private async mutate(
    offset: number,
    length: number,
    isFua: boolean,
    bytes: Bytes,
  ): Promise<void> {
    this.checkOpen();
    if (this.caps.isReadOnly) throw new BlockError(BlockErrorCode.EPERM, 'overlay is read-only');
    const log = this.newestLog;
    const end = offset + length;
    const first = Math.floor(offset / this.granularityBytes);
    const last = Math.floor((end - 1) / this.granularityBytes);
    // The lock holds the whole granules the mutation touches, `first..last`.
    const spanStart = first * this.granularityBytes;
    const spanLength = this.granuleEnd(end - 1) - spanStart;
    this.mutationsInFlight += 1;
    try {
      const release = await this.lock.acquire(spanStart, spanLength);
      try {
        const isHeadPartial = this.isPartial(first, offset, end);
        const isTailPartial = last !== first && this.isPartial(last, offset, end);
        const bodyFirst = isHeadPartial ? first + 1 : first;
        const bodyLast = isTailPartial ? last - 1 : last;
        const work: Promise<void>[] = [];
        if (isHeadPartial) work.push(this.copyOnWrite(log, first, offset, end, bytes));
        if (isTailPartial) work.push(this.copyOnWrite(log, last, offset, end, bytes));
        if (bodyFirst <= bodyLast) work.push(this.writeBody(log, bodyFirst, bodyLast, bytes));
        await settleAll(work);
      } finally {
        // After every piece settled: a flush from now on covers whatever of it landed.
        this.unflushed.add(log.device);
        release();
      }
      if (isFua) await log.device.flush();
    } catch (error) {
      this.onFailure(error);
      throw error;
    } finally {
      this.mutationsInFlight -= 1;
    }
  }

  /** Rewrites granule `index` whole in `log`, with the mutation's bytes over its current content. */
  private async copyOnWrite(
    log: RedoLog,
    index: number,
    offset: number,
    end: number,
    bytes: Bytes,
  ): Promise<void> {
    const start = index * this.granularityBytes;
    const length = this.granuleEnd(start) - start;
    const granule = await this.readChain(start, length);
    const from = Math.max(offset, start);
    const to = Math.min(end, start + length);
    bytes(from, to - from).copy(granule, from - start);
    await log.device.write(start, granule);
    log.present.mark(start, length);
  }

  /** Writes granules `first..last`, which the mutation covers whole, in pieces, marking each. */
  private async writeBody(log: RedoLog, first: number, last: number, bytes: Bytes): Promise<void> {
    const granule = this.granularityBytes;
    const pieceMax = Math.min(PIECE_BYTES_MAX, log.device.limits.maximumBytes);
    const pieceBytes = Math.max(granule, Math.floor(pieceMax / granule) * granule);
    const end = Math.min(this.size, (last + 1) * granule);
    for (let at = first * granule; at < end; at += pieceBytes) {
      const length = Math.min(pieceBytes, end - at);
      await log.device.write(at, bytes(at, length));
      log.present.mark(at, length);
    }
  }

  /** Zeros for any piece or granule: one shared buffer, never written to. */
  private readonly zeroBytes: Bytes = (_at, length) => {
    this.zeros ??= Buffer.alloc(Math.max(PIECE_BYTES_MAX, this.granularityBytes));
    return this.zeros.subarray(0, length);
  };

  /** Maximal runs of `[offset, offset + length)` that one layer (log or base) serves, in order. */
  private layerRuns(offset: number, length: number): LayerRun[] {
    return this.granuleRuns(offset, offset + length, (at) => this.layerAt(at)).map((run) => ({
      device: run.key,
      offset: run.offset,
      length: run.length,
    }));
  }

  /** Maximal runs of `[offset, end)`, granule by granule, over which `keyAt` stays the same. */
  private granuleRuns<K>(offset: number, end: number, keyAt: (at: number) => K): KeyedRun<K>[] {
    const runs: KeyedRun<K>[] = [];
    let at = offset;
    while (at < end) {
      const key = keyAt(at);
      let runEnd = Math.min(end, this.granuleEnd(at));
      while (runEnd < end && keyAt(runEnd) === key) runEnd = Math.min(end, this.granuleEnd(runEnd));
      runs.push({ key, offset: at, length: runEnd - at });
      at = runEnd;
    }
    return runs;
  }

  /** The device holding the granule at `offset`: the newest log that has it, else the base. */
  private layerAt(offset: number): BlockDevice {
    for (let i = this.chain.length - 1; i >= 0; i -= 1) {
      const log = this.chain[i];
      if (log?.present.isDirty(offset, 1)) return log.device;
    }
    return this.base;
  }

  private isInAnyLog(offset: number): boolean {
    return this.layerAt(offset) !== this.base;
  }

  /** The base's map of `[offset, offset + length)`, clipped to it, starting at `offset`. */
  private async baseExtents(offset: number, length: number): Promise<Extent[]> {
    if (!this.base.caps.canExtents) return [{ offset, length, kind: 'data' }];
    const end = offset + length;
    const clipped: Extent[] = [];
    for (const extent of await this.base.extents(offset, length)) {
      if (extent.offset >= end) break;
      const stop = Math.min(end, extent.offset + extent.length);
      clipped.push({ offset: extent.offset, length: stop - extent.offset, kind: extent.kind });
    }
    assert(clipped[0]?.offset === offset, 'base extents must start at offset');
    return clipped;
  }

  /** The end of the granule holding `offset`, clipped to the disk. */
  private granuleEnd(offset: number): number {
    const granule = this.granularityBytes;
    return Math.min(this.size, (Math.floor(offset / granule) + 1) * granule);
  }

  /** True when `[offset, end)` covers granule `index` only partly. */
  private isPartial(index: number, offset: number, end: number): boolean {
    const start = index * this.granularityBytes;
    return offset > start || end < this.granuleEnd(start);
  }

  private checkOpen(): void {
    if (this.isClosed) throw new BlockError(BlockErrorCode.ESHUTDOWN, 'overlay is closed');
  }
}

interface KeyedRun<K> {
  readonly key: K;
  readonly offset: number;
  readonly length: number;
}

interface LayerRun {
  readonly device: BlockDevice;
  readonly offset: number;
  readonly length: number;
}

/** Waits for every promise, then rejects with the first failure: nothing is left running. */
async function settleAll(work: readonly Promise<unknown>[]): Promise<void> {
  const outcomes = await Promise.allSettled(work);
  for (const outcome of outcomes) if (outcome.status === 'rejected') throw outcome.reason;
}
