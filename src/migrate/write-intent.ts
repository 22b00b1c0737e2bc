import type { BlockDevice, WriteOptions, ZeroOptions } from '../block/device.js';
import { PassThrough } from '../block/filter.js';
import type { CopyState } from './copy-state.js';

/**
 * The write-intent filter of a resumable move (copy-state.ts, rule 1): in the guest's path above
 * the method's filter, so every guest write, zeroes and trim counts against the state before it
 * reaches the source, the destination or a redo log. A write to a region whose intent is already
 * durable costs two counter updates; the first one after a checkpoint waits for one persist,
 * which the writes arriving meanwhile share.
 */
export class WriteIntentFilter extends PassThrough {
  constructor(
    next: BlockDevice,
    private readonly state: CopyState,
  ) {
    super(next);
  }

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    const length = data.length;
    try {
      const waiting = this.state.beforeWrite(offset, length);
      if (waiting !== undefined) await waiting;
      await this.next.write(offset, data, options);
    } finally {
      this.state.afterWrite(offset, length);
    }
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    try {
      const waiting = this.state.beforeWrite(offset, length);
      if (waiting !== undefined) await waiting;
      await this.next.writeZeroes(offset, length, options);
    } finally {
      this.state.afterWrite(offset, length);
    }
  }

  override async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    try {
      const waiting = this.state.beforeWrite(offset, length);
      if (waiting !== undefined) await waiting;
      await this.next.trim(offset, length, options);
    } finally {
      this.state.afterWrite(offset, length);
    }
  }
}
