import { performance } from 'node:perf_hooks';
import { assert } from '../util/assert.js';
import type { BlockDevice, WriteOptions } from './device.js';
import { BlockError, BlockErrorCode } from './errors.js';
import { PassThrough } from './filter.js';

export interface ThrottleOptions {
  /** Read and write payload bytes per second; 0 means unlimited. */
  readonly bytesPerSecond: number;
  /** The burst, as time at the full rate: how far an idle device may run ahead. Default 100. */
  readonly burstMs?: number;
}

const BURST_MS_DEFAULT = 100;

interface Waiter {
  readonly bytes: number;
  /** Starts the request on `next`; its outcome settles the caller's promise. */
  readonly start: () => void;
  readonly reject: (error: BlockError) => void;
}

/**
 * Limits the payload bytes per second of read and write (nbdkit's `rate` filter, QEMU's
 * `throttle` group), so a migration's bulk copy leaves the datastore to the guests. The other
 * verbs carry no payload and pass at once: writeZeroes, trim, flush, cache and extents.
 *
 * Token bucket. Tokens are bytes, earned at the rate, held up to a burst of `burstMs` at the rate
 * (default 100 ms), and the bucket starts full. A request is admitted when the bucket holds its
 * size, or the whole burst if it is larger: a request larger than the burst borrows (the bucket
 * goes negative) and later requests pay the debt, so the long-run rate holds for any mix of
 * sizes and no request is ever refused for its size.
 *
 * Order: strictly FIFO. While anyone waits, a new request queues behind it even if the bucket
 * could pay for it, so small requests neither starve a big one nor are overtaken by it. Admitted
 * requests are started on `next` synchronously, in queue order, before the admitting call
 * returns, so no later arrival can slip in between.
 *
 * Limits: at most one timer exists at a time (armed for the head of the queue only). The wait
 * queue needs no bound of its own: it holds only requests that callers have already issued and
 * await, so it is bounded by the callers' in-flight windows (the NBD server's per-connection
 * limit, the copier's window).
 */
export class Throttle extends PassThrough {
  private readonly burstMs: number;
  private bytesPerSecond = 0;
  private burstBytes = 0;
  /** Negative while a request larger than the burst is being paid off. */
  private tokensBytes = 0;
  private refilledAtMs = 0;
  /** FIFO. `shift()` is cheap at the lengths the callers' windows allow. */
  private readonly waiters: Waiter[] = [];
  private timer: NodeJS.Timeout | undefined;
  private isClosed = false;

  constructor(next: BlockDevice, options: ThrottleOptions) {
    super(next);
    this.burstMs = options.burstMs ?? BURST_MS_DEFAULT;
    assert(Number.isFinite(this.burstMs) && this.burstMs > 0, 'throttle burstMs must be positive');
    this.setRate(options.bytesPerSecond);
  }

  get rateBytesPerSecond(): number {
    return this.bytesPerSecond;
  }

  /** Requests waiting for tokens. */
  get waitingCount(): number {
    return this.waiters.length;
  }

  /**
   * Changes the rate at once, for waiting requests too: tokens earned so far are counted at the
   * old rate, the head's timer is re-armed for the new one. 0 releases every waiter now.
   */
  setRate(bytesPerSecond: number): void {
    assert(
      Number.isFinite(bytesPerSecond) && bytesPerSecond >= 0,
      `throttle rate must be a finite number >= 0, got ${bytesPerSecond}`,
    );
    const nowMs = performance.now();
    const wasUnlimited = this.bytesPerSecond === 0;
    if (!wasUnlimited) this.refill(nowMs);
    this.bytesPerSecond = bytesPerSecond;
    this.burstBytes = (bytesPerSecond * this.burstMs) / 1000;
    this.tokensBytes = wasUnlimited ? this.burstBytes : Math.min(this.tokensBytes, this.burstBytes);
    this.refilledAtMs = nowMs;
    this.disarm();
    this.serve();
  }

  override read(offset: number, length: number, target?: Buffer): Promise<Buffer> {
    if (this.tryTake(length)) return this.next.read(offset, length, target);
    return this.enqueue(length, () => this.next.read(offset, length, target));
  }

  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    if (this.tryTake(data.length)) return this.next.write(offset, data, options);
    return this.enqueue(data.length, () => this.next.write(offset, data, options));
  }

  /**
   * Pays for `bytes` moved without a read or write through this device (the copier's offload:
   * the kernel copies them), waiting in line with the requests like one of them.
   */
  admit(bytes: number): Promise<void> {
    if (this.tryTake(bytes)) return Promise.resolve();
    return this.enqueue(bytes, async () => undefined);
  }

  /** Rejects every waiting request with ESHUTDOWN (they never reach `next`), then closes `next`. */
  override async close(): Promise<void> {
    this.isClosed = true;
    this.disarm();
    const error = new BlockError(BlockErrorCode.ESHUTDOWN, 'throttle closed while waiting');
    for (const waiter of this.waiters.splice(0)) waiter.reject(error);
    await super.close();
  }

  /** Admits a request without queueing when nobody waits and the bucket can pay. */
  private tryTake(bytes: number): boolean {
    if (this.isClosed || this.waiters.length > 0) return false;
    if (this.bytesPerSecond === 0) return true;
    this.refill(performance.now());
    if (this.tokensBytes < Math.min(bytes, this.burstBytes)) return false;
    this.tokensBytes -= bytes;
    return true;
  }

  private enqueue<T>(bytes: number, start: () => Promise<T>): Promise<T> {
    if (this.isClosed) {
      return Promise.reject(new BlockError(BlockErrorCode.ESHUTDOWN, 'throttle is closed'));
    }
    return new Promise<T>((resolve, reject) => {
      const run = (): void => {
        // `next` may break its contract and throw instead of rejecting; the caller still hears.
        try {
          start().then(resolve, reject);
        } catch (error) {
          reject(error);
        }
      };
      this.waiters.push({ bytes, start: run, reject });
      if (this.timer === undefined) this.serve();
    });
  }

  /** Starts every head request the bucket can pay for, then arms the one timer for the next. */
  private serve(): void {
    if (this.bytesPerSecond === 0) {
      for (const waiter of this.waiters.splice(0)) waiter.start();
      return;
    }
    this.refill(performance.now());
    let head = this.waiters[0];
    while (head !== undefined && this.tokensBytes >= Math.min(head.bytes, this.burstBytes)) {
      this.tokensBytes -= head.bytes;
      this.waiters.shift();
      head.start();
      head = this.waiters[0];
    }
    if (head !== undefined) this.arm(head);
  }

  private arm(head: Waiter): void {
    assert(this.timer === undefined, 'throttle keeps one timer at most');
    const missingBytes = Math.min(head.bytes, this.burstBytes) - this.tokensBytes;
    // Rounded up: a timer that fires before the tokens are there would only re-arm itself.
    const waitMs = Math.max(1, Math.ceil((missingBytes * 1000) / this.bytesPerSecond));
    this.timer = setTimeout(this.onTimer, waitMs);
  }

  private disarm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.serve();
  };

  private refill(nowMs: number): void {
    const earnedBytes = ((nowMs - this.refilledAtMs) * this.bytesPerSecond) / 1000;
    this.tokensBytes = Math.min(this.burstBytes, this.tokensBytes + earnedBytes);
    this.refilledAtMs = nowMs;
  }
}
