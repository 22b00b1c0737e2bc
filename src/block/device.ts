/**
 * The one contract of the block layer. Backends (raw file, memory, NBD client) and filters
 * (stats, throttle, switch, ...) all implement `BlockDevice`, so a filter stack is itself a
 * device and the NBD server, the copier and the tests see one shape.
 *
 * Offsets and lengths are byte counts held in `number` (safe integers). Callers guarantee a
 * request lies within `[0, size)` and has a positive length, except `extents`, which may be
 * asked past what the device knows and answers for a prefix. Every failure is a `BlockError`.
 */

/** How a device supports an optional operation: not at all, by a slower fallback, or natively. */
export type Support = 'none' | 'emulate' | 'native';

export interface BlockCaps {
  /** Writes, zeroes and trims fail with EPERM. */
  readonly isReadOnly: boolean;
  /** `flush` makes earlier acknowledged writes durable (false: there is nothing to flush). */
  readonly canFlush: boolean;
  /** Force unit access: `native`, or `emulate` by flushing after the write. */
  readonly fua: Support;
  /** `writeZeroes`: `native` is faster than writing zeros; `emulate` writes zero buffers. */
  readonly zero: Support;
  /** `trim` may release space (`none`: it is accepted and does nothing). */
  readonly trim: Support;
  /** `extents` reports holes and zeros (false: it reports the whole range as data). */
  readonly canExtents: boolean;
  /** A flush through one handle covers writes completed through every other handle. */
  readonly isMultiConnSafe: boolean;
}

export interface BlockLimits {
  /** Smallest alignment that requests must keep (1: any byte). */
  readonly minimumBytes: number;
  /** Alignment that avoids read-modify-write inside the device. */
  readonly preferredBytes: number;
  /** Largest single read or write payload. */
  readonly maximumBytes: number;
  /** How many requests the device serves at once with benefit. */
  readonly inFlightMax: number;
}

/**
 * One run of a device's allocation map. `hole`: not allocated, reads as zeros. `zero`: allocated,
 * reads as zeros. `data`: anything else (the device does not know it reads as zeros).
 */
export type ExtentKind = 'data' | 'zero' | 'hole';
export interface Extent {
  readonly offset: number;
  readonly length: number;
  readonly kind: ExtentKind;
}

export interface WriteOptions {
  /** Acknowledge only once the data is durable (NBD_CMD_FLAG_FUA). */
  readonly fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** The range may become a hole (NBD: unless NBD_CMD_FLAG_NO_HOLE). */
  readonly mayTrim?: boolean;
  /** Fail with ENOTSUP at once unless zeroing is faster than writing zeros (NBD_CMD_FLAG_FAST_ZERO). */
  readonly fastOnly?: boolean;
}

export interface BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits;
  /**
   * Resolves with exactly `length` bytes; the buffer belongs to the caller. With `target`
   * (exactly `length` bytes, the caller's), the device may read into it and resolve with it, so
   * a server can serve reads from buffers it reuses; a device may as well ignore it and resolve
   * with a buffer of its own, so the caller uses the buffer the promise gives. Filters pass
   * `target` down, and none touches it after the promise settles. On failure `target`'s
   * contents are unspecified.
   */
  read(offset: number, length: number, target?: Buffer): Promise<Buffer>;
  /** The device must not keep `data` after the promise settles. */
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void>;
  /** After success the range reads as zeros. */
  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void>;
  /** A hint: the range's contents become unspecified until written; may release space. */
  trim(offset: number, length: number, options?: WriteOptions): Promise<void>;
  /** Makes every write completed before the call durable. */
  flush(): Promise<void>;
  /** Prefetch hint (NBD_CMD_CACHE); succeeding without effect is allowed. */
  cache(offset: number, length: number): Promise<void>;
  /**
   * The allocation map from `offset`, covering at least one byte and at most `length` bytes,
   * contiguous, in order, starting exactly at `offset`. `runsMax` (a hint, default: the
   * device's own bound) caps how many runs it works out: a client that wants one (NBD's
   * REQ_ONE) must not pay for a thousand seeks through a fragmented image.
   */
  extents(offset: number, length: number, runsMax?: number): Promise<Extent[]>;
  /** Releases the device; any later call fails with ESHUTDOWN. */
  close(): Promise<void>;
}
