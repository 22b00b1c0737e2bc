import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './device.js';
import { PassThrough } from './filter.js';

/**
 * A test double (STYLE.md, "Tests"): delays every request by `delayMs()` before passing it on,
 * so requests that would finish in call order on a memory device overlap and finish out of order,
 * as they do on a real disk or a network. A slow destination is a Delay with a large delay.
 *
 * A delay under 1 ms is spent as event-loop turns (`TURNS_PER_MS` per ms, at least one): Node's
 * timers have a 1 ms grain, so a timer would make every small delay 1 ms and requests with
 * different small delays would still finish in step. A delay of 1 ms or more is a timer.
 */
export class Delay extends PassThrough {
  private readonly delayMs: () => number;

  constructor(next: BlockDevice, delayMs: () => number) {
    super(next);
    this.delayMs = delayMs;
  }

  override async read(offset: number, length: number, target?: Buffer): Promise<Buffer> {
    await this.wait();
    return this.next.read(offset, length, target);
  }

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await this.wait();
    return this.next.write(offset, data, options);
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    await this.wait();
    return this.next.writeZeroes(offset, length, options);
  }

  override async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    await this.wait();
    return this.next.trim(offset, length, options);
  }

  override async flush(): Promise<void> {
    await this.wait();
    return this.next.flush();
  }

  override async extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    await this.wait();
    return this.next.extents(offset, length, runsMax);
  }

  private async wait(): Promise<void> {
    const ms = this.delayMs();
    if (ms >= 1) {
      await new Promise((resolve) => setTimeout(resolve, ms));
      return;
    }
    const turns = Math.max(1, Math.round(ms * TURNS_PER_MS));
    for (let turn = 0; turn < turns; turn += 1) {
      await new Promise((resolve) => setImmediate(resolve));
    }
  }
}

/** Event-loop turns that stand for 1 ms: a turn of a busy test loop takes tens of microseconds. */
const TURNS_PER_MS = 20;
