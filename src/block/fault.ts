import type { BlockDevice, WriteOptions, ZeroOptions } from './device.js';
import { BlockError, type BlockErrorCode } from './errors.js';
import { PassThrough } from './filter.js';

/**
 * A test double (STYLE.md, "Tests"; DESIGN.md, "Fault injection"): fails writes, zeroes and
 * flushes with `code` once armed, as a destination that hits a media error (EIO) or runs out of
 * space (ENOSPC) would. Armed by `arm()`, or by itself once `afterBytes` bytes have been written.
 * Reads keep working, as they do on a full disk.
 */
export interface FaultOptions {
  readonly code: BlockErrorCode;
  /** Arm after this many written bytes; default: only when `arm()` is called. */
  readonly afterBytes?: number;
}

export class FaultInjector extends PassThrough {
  writtenBytes = 0;
  /** Requests refused so far. */
  failures = 0;
  private isArmed = false;
  private readonly options: FaultOptions;

  constructor(next: BlockDevice, options: FaultOptions) {
    super(next);
    this.options = options;
  }

  arm(): void {
    this.isArmed = true;
  }

  disarm(): void {
    this.isArmed = false;
  }

  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.guard(data.length, () => this.next.write(offset, data, options));
  }

  override writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.guard(0, () => this.next.writeZeroes(offset, length, options));
  }

  override flush(): Promise<void> {
    return this.guard(0, () => this.next.flush());
  }

  private async guard(bytes: number, start: () => Promise<void>): Promise<void> {
    const after = this.options.afterBytes;
    if (after !== undefined && this.writtenBytes + bytes > after) this.isArmed = true;
    if (this.isArmed) {
      this.failures += 1;
      throw new BlockError(this.options.code, `injected fault: ${this.options.code}`);
    }
    this.writtenBytes += bytes;
    await start();
  }
}
