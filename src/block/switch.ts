import { performance } from 'node:perf_hooks';
import { assert } from '../util/assert.js';
import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from './device.js';
import { BlockError, BlockErrorCode } from './errors.js';

interface Held {
  /** Starts the request on the current device; its outcome settles the caller's promise. */
  readonly start: () => void;
  readonly reject: (error: BlockError) => void;
}

interface Drain {
  readonly resolve: () => void;
  readonly reject: (error: BlockError) => void;
}

/**
 * The stun point of switchover (DESIGN.md, "Switchover"): a filter that can hold new requests,
 * wait for those below to finish, re-point to another device of the same size, and let the held
 * requests go to it.
 *
 * Invariants:
 * - While paused, no request is started on any device: new ones are held in arrival order.
 * - `pause()` resolves only when no request is in flight below; from then until `resume()`,
 *   nothing touches the current device, so the caller may flush it, copy its last blocks and
 *   `repoint`.
 * - `resume()` starts every held request on the (new) current device synchronously, in arrival
 *   order, before it returns; so held requests keep their order among themselves and come before
 *   any request issued after `resume()`. A write held during the pause lands on the new device
 *   only, never the old one.
 *
 * `pause()` and `resume()` are not idempotent: pausing a paused switch, or resuming a running
 * one, is a failed assertion. One switchover owns the stun; a second owner would be a bug that an
 * idempotent call would hide (the first resume would release the second owner's stun).
 *
 * The hold queue has no bound of its own, on purpose: it holds only requests that callers have
 * already issued and await, so it is bounded by the callers' in-flight windows (the NBD server's
 * per-connection limit, the copier's window), and refusing one would fail a guest write only
 * because the migration stunned it. The time held is what switchover bounds, by its downtime
 * target.
 *
 * Not an observe-only filter: it re-points, so it implements every verb itself (no PassThrough).
 */
export class Switch implements BlockDevice {
  private current: BlockDevice;
  private isPausedNow = false;
  private isClosed = false;
  private inFlight = 0;
  private readonly held: Held[] = [];
  /** Pending `pause()` waiting for in-flight requests to finish. */
  private drain: Drain | undefined;
  private pausedAtMs = 0;
  private lastPauseMsValue: number | undefined;

  constructor(initial: BlockDevice) {
    this.current = initial;
  }

  get size(): number {
    return this.current.size;
  }

  get caps(): BlockCaps {
    return this.current.caps;
  }

  get limits(): BlockLimits {
    return this.current.limits;
  }

  get isPaused(): boolean {
    return this.isPausedNow;
  }

  /** Requests held since `pause()`, not yet started anywhere. */
  get heldCount(): number {
    return this.held.length;
  }

  /** Requests started on a device below and not yet settled. */
  get inFlightCount(): number {
    return this.inFlight;
  }

  /** Duration of the last completed pause, from the `pause()` call to `resume()`; the downtime. */
  get lastPauseMs(): number | undefined {
    return this.lastPauseMsValue;
  }

  /**
   * Holds every request issued from now on, and resolves when none is in flight below (at once if
   * none is). Precondition: not paused (asserted). Rejects with ESHUTDOWN if the switch is or
   * gets closed, and with EINVAL if `resume()` is called before the drain finished (an abandoned
   * switchover, e.g. one that ran out of its downtime budget).
   */
  pause(): Promise<void> {
    assert(!this.isPausedNow, 'switch is already paused: one switchover owns the stun');
    if (this.isClosed) return Promise.reject(this.closedError());
    this.isPausedNow = true;
    this.pausedAtMs = performance.now();
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.drain = { resolve, reject };
    });
  }

  /**
   * Sends later requests (and those held) to `target`, and returns the previous device, which the
   * caller closes if it wants. Precondition: paused and drained, i.e. `pause()` has resolved
   * (asserted). Throws EINVAL, changing nothing, if `target` is not the same size; ESHUTDOWN if
   * closed.
   */
  repoint(target: BlockDevice): BlockDevice {
    assert(this.isPausedNow, 'switch must be paused to repoint');
    assert(this.inFlight === 0, 'switch repointed before pause() resolved: requests in flight');
    if (this.isClosed) throw this.closedError();
    if (target.size !== this.current.size) {
      throw new BlockError(
        BlockErrorCode.EINVAL,
        `switch target is ${target.size} bytes, the current device ${this.current.size}`,
      );
    }
    const previous = this.current;
    this.current = target;
    return previous;
  }

  /**
   * Ends the pause and starts every held request on the current device, in arrival order, before
   * returning. Precondition: paused (asserted).
   */
  resume(): void {
    assert(this.isPausedNow, 'switch is not paused');
    this.isPausedNow = false;
    this.lastPauseMsValue = performance.now() - this.pausedAtMs;
    const drain = this.drain;
    this.drain = undefined;
    drain?.reject(
      new BlockError(BlockErrorCode.EINVAL, 'switch resumed before in-flight requests drained'),
    );
    for (const held of this.held.splice(0)) held.start();
  }

  // read and write, the guest's hot path, chain one `then` with callbacks made once per switch
  // instead of an async function's await: the same accounting, settled at the same point.
  read(offset: number, length: number, target?: Buffer): Promise<Buffer> {
    if (this.isPausedNow) return this.hold(() => this.read(offset, length, target));
    this.inFlight += 1;
    try {
      return this.current.read(offset, length, target).then(this.leaveWith, this.leaveThrowing);
    } catch (error) {
      this.leave();
      return Promise.reject(error);
    }
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    if (this.isPausedNow) return this.hold(() => this.write(offset, data, options));
    this.inFlight += 1;
    try {
      return this.current.write(offset, data, options).then(this.leaveWith, this.leaveThrowing);
    } catch (error) {
      this.leave();
      return Promise.reject(error);
    }
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    if (this.isPausedNow) return this.hold(() => this.writeZeroes(offset, length, options));
    this.inFlight += 1;
    try {
      return await this.current.writeZeroes(offset, length, options);
    } finally {
      this.leave();
    }
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    if (this.isPausedNow) return this.hold(() => this.trim(offset, length, options));
    this.inFlight += 1;
    try {
      return await this.current.trim(offset, length, options);
    } finally {
      this.leave();
    }
  }

  async flush(): Promise<void> {
    if (this.isPausedNow) return this.hold(() => this.flush());
    this.inFlight += 1;
    try {
      return await this.current.flush();
    } finally {
      this.leave();
    }
  }

  async cache(offset: number, length: number): Promise<void> {
    if (this.isPausedNow) return this.hold(() => this.cache(offset, length));
    this.inFlight += 1;
    try {
      return await this.current.cache(offset, length);
    } finally {
      this.leave();
    }
  }

  async extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    if (this.isPausedNow) return this.hold(() => this.extents(offset, length, runsMax));
    this.inFlight += 1;
    try {
      return await this.current.extents(offset, length, runsMax);
    } finally {
      this.leave();
    }
  }

  /**
   * Rejects held requests and a pending `pause()` with ESHUTDOWN, then closes the current device
   * (not a previous one: `repoint` handed that to its caller). Requests in flight below are left to
   * the device's own close. Later requests fail with ESHUTDOWN (held ones at once; others from the
   * closed device).
   */
  async close(): Promise<void> {
    this.isClosed = true;
    const error = this.closedError();
    const drain = this.drain;
    this.drain = undefined;
    drain?.reject(error);
    for (const held of this.held.splice(0)) held.reject(error);
    await this.current.close();
  }

  /** Queues `start` (a call of the same verb, made again once the switch runs). */
  private hold<T>(start: () => Promise<T>): Promise<T> {
    if (this.isClosed) return Promise.reject(this.closedError());
    return new Promise<T>((resolve, reject) => {
      // `start` re-enters a verb, which never throws synchronously.
      this.held.push({ start: () => void start().then(resolve, reject), reject });
    });
  }

  private readonly leaveWith = <T>(value: T): T => {
    this.leave();
    return value;
  };

  private readonly leaveThrowing = (error: unknown): never => {
    this.leave();
    throw error;
  };

  private leave(): void {
    this.inFlight -= 1;
    if (this.inFlight > 0 || this.drain === undefined) return;
    const drain = this.drain;
    this.drain = undefined;
    drain.resolve();
  }

  private closedError(): BlockError {
    return new BlockError(BlockErrorCode.ESHUTDOWN, 'switch is closed');
  }
}
