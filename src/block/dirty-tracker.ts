import type { BlockDevice, WriteOptions, ZeroOptions } from './device.js';
import type { DirtyBitmap } from './dirty-bitmap.js';
import { PassThrough } from './filter.js';

/**
 * Changed-block tracking (VMware's CBT, QEMU's dirty bitmaps): every write, zero and trim that
 * goes through marks the granules it touches in `bitmap`, which the caller may swap at any time
 * (a copy pass forks a successor bitmap, STYLE.md "Dirty-tracking rules").
 *
 * Marking happens when the request *settles*, failed or not, as QEMU marks at the end of a
 * write request: a copy that clears a granule and reads it while a write is in flight is then
 * always followed by the mark, so the copy cannot be the last word on that granule. A failed
 * write is marked too, since part of it may have landed.
 */
export class DirtyTracker extends PassThrough {
  bitmap: DirtyBitmap;

  constructor(next: BlockDevice, bitmap: DirtyBitmap) {
    super(next);
    this.bitmap = bitmap;
  }

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    try {
      await this.next.write(offset, data, options);
    } finally {
      this.bitmap.mark(offset, data.length);
    }
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    try {
      await this.next.writeZeroes(offset, length, options);
    } finally {
      this.bitmap.mark(offset, length);
    }
  }

  override async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    try {
      await this.next.trim(offset, length, options);
    } finally {
      this.bitmap.mark(offset, length);
    }
  }
}
