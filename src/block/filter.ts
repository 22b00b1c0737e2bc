import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from './device.js';

/**
 * The base of observe-only filters (stats, throttle, delay, log), like nbdkit's filter
 * pass-through: every verb goes to `next` unchanged, so a subclass overrides only what it
 * watches. Filters that move or change data (switch, mirror, overlay) implement `BlockDevice`
 * themselves instead, so that a new verb breaks their build until each decides what to do.
 *
 * `size`, `caps` and `limits` are getters, not copies taken at construction: the device below
 * may be a `Switch`, which re-points to another device at switchover, and a filter above it must
 * then report the new device's caps and limits.
 *
 * Failures of `next` reach the caller unchanged (same error object).
 */
export abstract class PassThrough implements BlockDevice {
  protected readonly next: BlockDevice;

  constructor(next: BlockDevice) {
    this.next = next;
  }

  get size(): number {
    return this.next.size;
  }

  get caps(): BlockCaps {
    return this.next.caps;
  }

  get limits(): BlockLimits {
    return this.next.limits;
  }

  read(offset: number, length: number, target?: Buffer): Promise<Buffer> {
    return this.next.read(offset, length, target);
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.next.write(offset, data, options);
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.next.writeZeroes(offset, length, options);
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.next.trim(offset, length, options);
  }

  flush(): Promise<void> {
    return this.next.flush();
  }

  cache(offset: number, length: number): Promise<void> {
    return this.next.cache(offset, length);
  }

  extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    return this.next.extents(offset, length, runsMax);
  }

  /** Closes `next`: a stack is closed from its top, and each filter owns the device below it. */
  close(): Promise<void> {
    return this.next.close();
  }
}
