import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BlockDevice, WriteOptions } from '../../src/block/device.js';
import { BlockErrorCode } from '../../src/block/errors.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Throttle } from '../../src/block/throttle.js';

const KIB = 1024;
const MIB = 1024 * KIB;
const SIZE_BYTES = 8 * MIB;

/** Records the order in which writes reach the device below (their byte length). */
class WriteOrder extends PassThrough {
  readonly lengths: number[] = [];
  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.lengths.push(data.length);
    return super.write(offset, data, options);
  }
}

/** A throttle closed after the test even if it fails, so no long timer keeps the run alive. */
function throttled(t: TestContext, next: BlockDevice, bytesPerSecond: number): Throttle {
  const throttle = new Throttle(next, { bytesPerSecond });
  t.after(() => throttle.close());
  return throttle;
}

const seconds = (startMs: number): number => (performance.now() - startMs) / 1000;

describe('Throttle', () => {
  it('writes 4 MiB at 8 MiB/s in about half a second', async (t) => {
    const throttle = throttled(t, new MemoryDevice(SIZE_BYTES), 8 * MIB);
    const chunk = Buffer.alloc(64 * KIB, 7);
    const startMs = performance.now();
    const writes = [];
    for (let at = 0; at < 4 * MIB; at += chunk.length) writes.push(throttle.write(at, chunk));
    assert.ok(throttle.waitingCount > 0, 'most of the writes wait');
    await Promise.all(writes);
    const elapsed = seconds(startMs);
    // 4 MiB less the 0.8 MiB burst at 8 MiB/s is 0.4 s; timers only make it later.
    assert.ok(elapsed >= 0.35 && elapsed <= 1.5, `took ${elapsed} s`);
    assert.equal(throttle.waitingCount, 0);
  });

  it('throttles reads, one at a time as well', async (t) => {
    const throttle = throttled(t, new MemoryDevice(SIZE_BYTES), 8 * MIB);
    const startMs = performance.now();
    for (let at = 0; at < 2 * MIB; at += 256 * KIB) await throttle.read(at, 256 * KIB);
    const elapsed = seconds(startMs);
    // 2 MiB less the 0.8 MiB burst at 8 MiB/s is 0.15 s.
    assert.ok(elapsed >= 0.12 && elapsed <= 1, `took ${elapsed} s`);
  });

  it('lets writeZeroes, trim, flush, cache and extents pass while data waits', async (t) => {
    const throttle = throttled(t, new MemoryDevice(SIZE_BYTES), KIB);
    await throttle.write(0, Buffer.alloc(MIB)); // larger than the burst: passes and borrows
    const waiting = throttle.write(MIB, Buffer.alloc(4 * KIB));
    const startMs = performance.now();
    await throttle.writeZeroes(0, MIB);
    await throttle.trim(0, MIB);
    await throttle.flush();
    await throttle.cache(0, MIB);
    await throttle.extents(0, SIZE_BYTES);
    assert.ok(seconds(startMs) < 0.1);
    assert.equal(throttle.waitingCount, 1);

    await throttle.close();
    await assert.rejects(waiting, { code: BlockErrorCode.ESHUTDOWN });
    await assert.rejects(throttle.read(0, 1), { code: BlockErrorCode.ESHUTDOWN });
  });

  it('close rejects waiters without starting them and closes the device below', async (t) => {
    const order = new WriteOrder(new MemoryDevice(SIZE_BYTES));
    const throttle = throttled(t, order, KIB);
    await throttle.write(0, Buffer.alloc(MIB));
    const waiters = [throttle.write(0, Buffer.alloc(1)), throttle.write(1, Buffer.alloc(2))];
    await throttle.close();
    for (const waiter of waiters) await assert.rejects(waiter, { code: BlockErrorCode.ESHUTDOWN });
    assert.deepEqual(order.lengths, [MIB]);
    await assert.rejects(order.flush(), { code: BlockErrorCode.ESHUTDOWN });
  });

  it('setRate during a wait takes effect for the waiting request', async (t) => {
    const throttle = throttled(t, new MemoryDevice(SIZE_BYTES), MIB);
    await throttle.write(0, Buffer.alloc(MIB)); // borrows 0.9 MiB: the next waits ~1 s at 1 MiB/s
    const startMs = performance.now();
    const waiting = throttle.write(MIB, Buffer.alloc(MIB));
    await sleep(50);
    assert.equal(throttle.waitingCount, 1);
    throttle.setRate(100 * MIB);
    assert.equal(throttle.rateBytesPerSecond, 100 * MIB);
    await waiting;
    const elapsed = seconds(startMs);
    assert.ok(elapsed < 0.5, `took ${elapsed} s: the old rate's timer was kept`);
  });

  it('setRate(0) releases every waiter at once and stops throttling', async (t) => {
    const order = new WriteOrder(new MemoryDevice(SIZE_BYTES));
    const throttle = throttled(t, order, KIB);
    await throttle.write(0, Buffer.alloc(MIB));
    const waiters = [1, 2, 3].map((n) => throttle.write(0, Buffer.alloc(n)));
    throttle.setRate(0);
    assert.deepEqual(order.lengths, [MIB, 1, 2, 3], 'released in order, before setRate returns');
    await Promise.all(waiters);
    const startMs = performance.now();
    await throttle.write(0, Buffer.alloc(4 * MIB));
    await throttle.write(0, Buffer.alloc(4 * MIB));
    assert.ok(seconds(startMs) < 0.2);
    throttle.setRate(KIB); // a fresh limit starts with a full burst
    await throttle.write(0, Buffer.alloc(100));
    assert.equal(throttle.waitingCount, 0);
  });

  it('serves FIFO: a big request is neither overtaken by small ones nor starves', async (t) => {
    // 1 MiB/s, burst 100 ms = 102.4 KiB, starting full.
    const order = new WriteOrder(new MemoryDevice(SIZE_BYTES));
    const throttle = throttled(t, order, MIB);
    const first = throttle.write(0, Buffer.alloc(100 * KIB)); // leaves 2.4 KiB in the bucket
    const big = throttle.write(0, Buffer.alloc(150 * KIB)); // waits for a full bucket, borrows
    const small = [1, 2, 3].map((kib) => throttle.write(0, Buffer.alloc(kib * KIB))); // would fit
    assert.deepEqual(order.lengths, [100 * KIB], 'the small ones queue behind the big one');
    await Promise.all([first, big, ...small]);
    assert.deepEqual(
      order.lengths,
      [100, 150, 1, 2, 3].map((kib) => kib * KIB),
    );
  });

  it('keeps one timer at most, armed for what the head is missing', async (t) => {
    // Counts live timers by wrapping the globals the filter calls; restored after the test.
    const realSet = globalThis.setTimeout;
    const realClear = globalThis.clearTimeout;
    const live = new Set<unknown>();
    const delaysMs: number[] = [];
    let liveMax = 0;
    t.after(() => {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    });
    globalThis.setTimeout = ((callback: () => void, delayMs: number) => {
      const timer = realSet(() => {
        live.delete(timer);
        callback();
      }, delayMs);
      live.add(timer);
      delaysMs.push(delayMs);
      liveMax = Math.max(liveMax, live.size);
      return timer;
    }) as typeof setTimeout;
    globalThis.clearTimeout = ((timer: NodeJS.Timeout) => {
      live.delete(timer);
      realClear(timer);
    }) as typeof clearTimeout;

    // 1 MiB/s, burst 102.4 KiB: after 100 KiB, a 150 KiB request misses 100 KiB of a full bucket.
    const throttle = throttled(t, new MemoryDevice(SIZE_BYTES), MIB);
    const writes = [
      throttle.write(0, Buffer.alloc(100 * KIB)),
      throttle.write(0, Buffer.alloc(150 * KIB)),
    ];
    assert.equal(delaysMs.length, 1);
    assert.ok(delaysMs[0]! >= 90 && delaysMs[0]! <= 100, `armed for ${delaysMs[0]} ms`);
    for (let i = 0; i < 40; i += 1) writes.push(throttle.write(0, Buffer.alloc(4 * KIB)));
    throttle.setRate(2 * MIB);
    throttle.setRate(4 * MIB);
    await Promise.all(writes);
    assert.equal(liveMax, 1);
  });
});
