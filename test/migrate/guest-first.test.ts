/**
 * The guest-first window (guest-first.ts) driven by hand-made latency counters, and the copier
 * keeping to whatever window it is given.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { DirtyBitmap } from '../../src/block/dirty-bitmap.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Copier } from '../../src/migrate/copier.js';
import { GuestFirst, type GuestLatencySample } from '../../src/migrate/guest-first.js';
import { Progress } from '../../src/migrate/progress.js';
import { prng, randomBytes } from '../block/random.js';
import { assertSameBytes } from './harness.js';

const KIB = 1024;

/** Counters the test advances: `busy(n, meanUs)` is n guest requests of that mean latency. */
function fakeGuest(): {
  sample: () => GuestLatencySample;
  busy: (n: number, meanUs: number) => void;
} {
  let operations = 0;
  let latencySumUs = 0;
  return {
    sample: () => ({ operations, latencySumUs }),
    busy: (n, meanUs) => {
      operations += n;
      latencySumUs += n * meanUs;
    },
  };
}

test('guest first: the window doubles while the guest is idle, up to the max, and starts at one', () => {
  const guest = fakeGuest();
  const window = new GuestFirst({ windowMax: 8, sample: guest.sample });
  assert.equal(window.window, 1);
  const seen: number[] = [];
  for (let tick = 0; tick < 5; tick += 1) {
    window.tick();
    seen.push(window.window);
  }
  assert.deepEqual(seen, [2, 4, 8, 8, 8]);
});

test('guest first: latency over the base halves the window down to one; back at the base it grows by one', () => {
  const guest = fakeGuest();
  const window = new GuestFirst({ windowMax: 8, sample: guest.sample });
  for (let tick = 0; tick < 3; tick += 1) window.tick(); // idle: 8
  guest.busy(100, 200); // the base: 200 µs
  window.tick();
  assert.equal(window.window, 8);
  const seen: number[] = [];
  for (let tick = 0; tick < 5; tick += 1) {
    guest.busy(100, 800); // four times the base: the copy is in the guest's way
    window.tick();
    seen.push(window.window);
  }
  assert.deepEqual(seen, [4, 2, 1, 1, 1], 'never below one chunk: the copy always moves on');
  for (let tick = 0; tick < 3; tick += 1) {
    guest.busy(100, 250); // within the slack of the base
    window.tick();
    seen.push(window.window);
  }
  assert.deepEqual(seen.slice(5), [2, 3, 4]);
  assert.ok(window.backoffs >= 3 && window.growths >= 3);
  window.stop();
  assert.equal(window.window, 8, 'stopped (the guest is held): the whole window');
});

test('guest first: a few requests in an interval are not a measurement; the window grows as if idle', () => {
  const guest = fakeGuest();
  const window = new GuestFirst({ windowMax: 4, sample: guest.sample });
  guest.busy(100, 100);
  window.tick();
  guest.busy(2, 50_000); // two slow requests: noise, not a trend
  window.tick();
  assert.equal(window.window, 4);
});

/** Counts the reads in flight at once below the copier. */
class InFlightCounter extends PassThrough {
  now = 0;
  peak = 0;
  constructor(next: BlockDevice) {
    super(next);
  }
  override async read(offset: number, length: number): Promise<Buffer> {
    this.now += 1;
    this.peak = Math.max(this.peak, this.now);
    try {
      await new Promise((resolve) => setTimeout(resolve, 1));
      return await this.next.read(offset, length);
    } finally {
      this.now -= 1;
    }
  }
}

for (const [label, isStopped, expectedPeak] of [
  ['a window of one', false, 1],
  ['a stopped window (guest held): every chunk', true, 8],
] as const) {
  test(`copier: keeps to the guest-first window, ${label}`, async () => {
    const sizeBytes = 1024 * KIB;
    const memory = new MemoryDevice(sizeBytes);
    const data = randomBytes(sizeBytes, prng(9));
    await memory.write(0, data);
    const source = new InFlightCounter(memory);
    const target = new MemoryDevice(sizeBytes);
    const guestFirst = new GuestFirst({ windowMax: 8, sample: fakeGuest().sample });
    if (isStopped) guestFirst.stop();
    const copier = new Copier(source, target, {
      touched: new DirtyBitmap(sizeBytes, 16 * KIB),
      progress: new Progress(sizeBytes),
      chunkBytes: 16 * KIB,
      inFlightMax: 8,
      guestFirst,
    });
    const bitmap = new DirtyBitmap(sizeBytes, 16 * KIB);
    bitmap.markAll();
    await copier.copyPass(bitmap);
    assert.equal(source.peak, expectedPeak);
    assertSameBytes(await target.read(0, sizeBytes), data, 'target');
  });
}
