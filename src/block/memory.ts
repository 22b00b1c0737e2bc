import { assert } from '../util/assert.js';
import type { BlockCaps, BlockDevice, BlockLimits, Extent, ExtentKind } from './device.js';
import { BlockError, BlockErrorCode } from './errors.js';

/**
 * A sparse in-memory disk for tests and demos. Storage is a map of fixed pages, allocated on
 * first write, so a 100 GiB device costs only what is written. A page that is never written, or
 * was trimmed or zeroed whole with `mayTrim`, is a hole; a page zeroed without `mayTrim` stays
 * allocated and reports as `zero` until written again.
 */
const PAGE_BYTES = 64 * 1024;

export interface MemoryDeviceOptions {
  readonly isReadOnly?: boolean;
}

interface Page {
  data: Buffer;
  /** Every byte is zero (known without scanning). */
  isZero: boolean;
}

export class MemoryDevice implements BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits = {
    minimumBytes: 1,
    preferredBytes: 4096,
    maximumBytes: 32 * 1024 * 1024,
    inFlightMax: 64,
  };
  private readonly pages = new Map<number, Page>();
  private isClosed = false;

  constructor(sizeBytes: number, options: MemoryDeviceOptions = {}) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, 'memory device size');
    this.size = sizeBytes;
    this.caps = {
      isReadOnly: options.isReadOnly ?? false,
      canFlush: false,
      fua: 'native',
      zero: 'native',
      trim: 'native',
      canExtents: true,
      isMultiConnSafe: true,
    };
  }

  /** Bytes held in allocated pages: lets tests see that holes cost nothing. */
  get allocatedBytes(): number {
    return this.pages.size * PAGE_BYTES;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    const out = Buffer.alloc(length);
    this.forEachPage(offset, length, (index, start, end, outAt) => {
      const page = this.pages.get(index);
      if (page && !page.isZero) page.data.copy(out, outAt, start, end);
    });
    return out;
  }

  async write(offset: number, data: Buffer): Promise<void> {
    this.checkWritable();
    this.forEachPage(offset, data.length, (index, start, end, dataAt) => {
      const page = this.pageForWrite(index);
      data.copy(page.data, start, dataAt, dataAt + (end - start));
      page.isZero = false;
    });
  }

  async writeZeroes(
    offset: number,
    length: number,
    options: { mayTrim?: boolean } = {},
  ): Promise<void> {
    this.checkWritable();
    this.forEachPage(offset, length, (index, start, end) => {
      const whole = start === 0 && end === PAGE_BYTES;
      if (whole && options.mayTrim) {
        this.pages.delete(index);
        return;
      }
      const page = this.pages.get(index);
      if (whole) {
        this.pages.set(index, { data: page?.data ?? Buffer.alloc(PAGE_BYTES), isZero: true });
        this.pages.get(index)?.data.fill(0);
      } else if (page) {
        page.data.fill(0, start, end);
      }
    });
  }

  async trim(offset: number, length: number): Promise<void> {
    // Trimmed bytes read back as zeros here, which the contract allows (it leaves them unspecified).
    await this.writeZeroes(offset, length, { mayTrim: true });
  }

  async flush(): Promise<void> {
    this.checkOpen();
  }

  async cache(): Promise<void> {
    this.checkOpen();
  }

  /** Stops after `runsMax` runs (a prefix, as the contract allows), like the raw file. */
  async extents(offset: number, length: number, runsMax = Infinity): Promise<Extent[]> {
    this.checkOpen();
    const runs: Extent[] = [];
    const end = Math.min(this.size, offset + length);
    let at = offset;
    while (at < end) {
      const index = Math.floor(at / PAGE_BYTES);
      const page = this.pages.get(index);
      const kind: ExtentKind = page === undefined ? 'hole' : page.isZero ? 'zero' : 'data';
      const runEnd = Math.min(end, (index + 1) * PAGE_BYTES);
      const last = runs[runs.length - 1];
      if (last && last.kind === kind) {
        runs[runs.length - 1] = { offset: last.offset, length: runEnd - last.offset, kind };
      } else {
        if (runs.length >= Math.max(1, runsMax)) break;
        runs.push({ offset: at, length: runEnd - at, kind });
      }
      at = runEnd;
    }
    return runs;
  }

  async close(): Promise<void> {
    this.isClosed = true;
    this.pages.clear();
  }

  private pageForWrite(index: number): Page {
    let page = this.pages.get(index);
    if (!page) {
      page = { data: Buffer.alloc(PAGE_BYTES), isZero: true };
      this.pages.set(index, page);
    }
    return page;
  }

  /** Calls `visit(pageIndex, startInPage, endInPage, offsetInRange)` for each page the range touches. */
  private forEachPage(
    offset: number,
    length: number,
    visit: (index: number, start: number, end: number, rangeAt: number) => void,
  ): void {
    assert(offset >= 0 && length >= 0 && offset + length <= this.size, 'memory device range');
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const index = Math.floor(at / PAGE_BYTES);
      const start = at - index * PAGE_BYTES;
      const stop = Math.min(PAGE_BYTES, end - index * PAGE_BYTES);
      visit(index, start, stop, at - offset);
      at = index * PAGE_BYTES + stop;
    }
  }

  private checkOpen(): void {
    if (this.isClosed) throw new BlockError(BlockErrorCode.ESHUTDOWN, 'memory device is closed');
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.caps.isReadOnly) {
      throw new BlockError(BlockErrorCode.EPERM, 'memory device is read-only');
    }
  }
}
