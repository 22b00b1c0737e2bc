import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { Delay } from '../../src/block/delay.js';
import type { WriteOptions, ZeroOptions } from '../../src/block/device.js';
import { BlockError, BlockErrorCode } from '../../src/block/errors.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import type { MethodEvent, MirrorMode } from '../../src/migrate/method.js';
import {
  ENTRY_OVERHEAD_BYTES,
  MirrorQueue,
  type MirrorQueueOptions,
  queueCostOf,
  type TargetWrite,
} from '../../src/migrate/mirror-queue.js';
import { prng, propertyOptions, randomBytes } from '../block/random.js';

const KIB = 1024;

/**
 * A target whose writes and zeroes wait, each, until the test releases it (in any order it
 * likes) or fails it: ordering under test, never timing.
 */
class GatedTarget extends PassThrough {
  readonly held: Array<{ offset: number; length: number; release: () => void; fail: () => void }> =
    [];
  private waiters: Array<() => void> = [];

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await this.hold(offset, data.length);
    await this.next.write(offset, data, options);
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    await this.hold(offset, length);
    await this.next.writeZeroes(offset, length, options);
  }

  /** Resolves once `count` requests are held. */
  async heldAtLeast(count: number): Promise<void> {
    while (this.held.length < count) await new Promise<void>((r) => this.waiters.push(r));
  }

  /** Releases the held request at `index` (default: the newest). */
  release(index = this.held.length - 1): void {
    const [entry] = this.held.splice(index, 1);
    assert.ok(entry !== undefined, 'a request is held there');
    entry.release();
  }

  private hold(offset: number, length: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.held.push({
        offset,
        length,
        release: resolve,
        fail: () => reject(new BlockError(BlockErrorCode.EIO, 'gated target failed')),
      });
      for (const wake of this.waiters.splice(0)) wake();
    });
  }
}

/**
 * Releases the target's held requests one at a time, `pick` choosing which, until the queue has
 * drained; returns what was released, in order, as [offset, length] in KiB.
 */
async function releaseAll(
  gate: GatedTarget,
  queue: MirrorQueue,
  pick: 'oldest' | 'newest',
): Promise<Array<[number, number]>> {
  const released: Array<[number, number]> = [];
  let isDrained = false;
  const drained = queue.drain().then(() => {
    isDrained = true;
  });
  for (;;) {
    await Promise.race([gate.heldAtLeast(1), drained]);
    if (isDrained) return released;
    const index = pick === 'oldest' ? 0 : gate.held.length - 1;
    const entry = gate.held[index];
    assert.ok(entry !== undefined);
    released.push([entry.offset / KIB, entry.length / KIB]);
    gate.release(index);
  }
}

interface Bench {
  readonly queue: MirrorQueue;
  readonly memory: MemoryDevice;
  readonly events: MethodEvent[];
  readonly lost: Array<{ offset: number; length: number }>;
  failures: unknown[];
}

function makeQueue(
  target: (memory: MemoryDevice) => PassThrough | MemoryDevice,
  options: Partial<MirrorQueueOptions> & { mode: MirrorMode },
  sizeBytes = 64 * KIB,
): Bench {
  const memory = new MemoryDevice(sizeBytes);
  const events: MethodEvent[] = [];
  const lost: Array<{ offset: number; length: number }> = [];
  const bench: Bench = {
    memory,
    events,
    lost,
    failures: [],
    queue: new MirrorQueue(target(memory), {
      bufferBytes: 1024 * KIB,
      lagMsMax: 1000,
      emit: (event) => events.push(event),
      onFailure: (reason) => bench.failures.push(reason),
      onLost: (offset, length) => lost.push({ offset, length }),
      ...options,
    }),
  };
  return bench;
}

/** Reserves room for `writes` and queues them, as a filter does once the source has them. */
async function put(queue: MirrorQueue, ...writes: TargetWrite[]): Promise<void> {
  const admission = await queue.reserve(queueCostOf(writes));
  assert.equal(admission.way, 'async');
  if (admission.way === 'async') queue.enqueue(admission, writes);
}

function write(offset: number, length: number, fill: number): TargetWrite {
  return { kind: 'write', offset, data: Buffer.alloc(length, fill) };
}

test('mirror queue: an entry overlapping one in flight waits for it, so the newer bytes land last', async () => {
  let gate: GatedTarget | undefined;
  const { queue, memory } = makeQueue(
    (m) => {
      gate = new GatedTarget(m);
      return gate;
    },
    { mode: 'async' },
  );
  assert.ok(gate !== undefined);
  await put(queue, write(0, 8 * KIB, 0xaa));
  await gate.heldAtLeast(1);
  await put(queue, write(4 * KIB, 8 * KIB, 0xbb));
  await put(queue, write(32 * KIB, 4 * KIB, 0xcc));
  // The disjoint one is sent past the blocked one; the overlapping one is not sent yet.
  await gate.heldAtLeast(2);
  assert.deepEqual(
    gate.held.map((h) => h.offset),
    [0, 32 * KIB],
  );
  // Release newest first, as a reordering network might: still the newer bytes win.
  const released = await releaseAll(gate, queue, 'newest');
  assert.deepEqual(released, [
    [32, 4],
    [0, 8],
    [4, 8],
  ]);
  const expected = Buffer.alloc(64 * KIB);
  expected.fill(0xaa, 0, 4 * KIB);
  expected.fill(0xbb, 4 * KIB, 12 * KIB);
  expected.fill(0xcc, 32 * KIB, 36 * KIB);
  assert.ok((await memory.read(0, 64 * KIB)).equals(expected));
});

test('mirror queue: queued entries a newer write overlaps are trimmed, split or dropped; the target gets each byte once', async () => {
  let gate: GatedTarget | undefined;
  const { queue, memory } = makeQueue(
    (m) => {
      gate = new GatedTarget(m);
      return gate;
    },
    { mode: 'async', inFlightMax: 1 },
  );
  assert.ok(gate !== undefined);
  // One far entry in flight keeps everything after it queued (one write in flight at most).
  await put(queue, write(60 * KIB, 4 * KIB, 1));
  await gate.heldAtLeast(1);
  await put(queue, write(0, 16 * KIB, 2));
  await put(queue, write(4 * KIB, 4 * KIB, 3)); // splits the first
  await put(queue, { kind: 'zero', offset: 12 * KIB, length: 8 * KIB, mayTrim: true }); // trims its tail
  await put(queue, write(20 * KIB, 4 * KIB, 4));
  await put(queue, write(20 * KIB, 4 * KIB, 5)); // replaces the previous one whole
  assert.equal(queue.stats.coalescedBytes, 4 * KIB + 4 * KIB + 4 * KIB);
  assert.equal(queue.pendingBytes, 4 * KIB + 4 * KIB + 4 * KIB + 4 * KIB + 8 * KIB + 4 * KIB);
  const sent = await releaseAll(gate, queue, 'oldest');
  // Oldest first; each piece of the split entry keeps the first one's place.
  assert.deepEqual(sent, [
    [60, 4],
    [0, 4],
    [8, 4],
    [4, 4],
    [12, 8],
    [20, 4],
  ]);
  const expected = Buffer.alloc(64 * KIB);
  expected.fill(2, 0, 12 * KIB);
  expected.fill(3, 4 * KIB, 8 * KIB);
  expected.fill(5, 20 * KIB, 24 * KIB);
  expected.fill(1, 60 * KIB, 64 * KIB);
  assert.ok((await memory.read(0, 64 * KIB)).equals(expected));
  assert.equal(queue.heldBytes, 0);
});

test('mirror queue: supersede drops queued parts and waits for the overlapping write in flight', async () => {
  let gate: GatedTarget | undefined;
  const { queue } = makeQueue(
    (m) => {
      gate = new GatedTarget(m);
      return gate;
    },
    { mode: 'auto', inFlightMax: 1 },
  );
  assert.ok(gate !== undefined);
  await put(queue, write(0, 8 * KIB, 1));
  await gate.heldAtLeast(1);
  await put(queue, write(16 * KIB, 8 * KIB, 2));
  let isDone = false;
  const superseding = queue.supersede(4 * KIB, 16 * KIB).then(() => {
    isDone = true;
  });
  await new Promise((r) => setImmediate(r));
  // The queued entry lost [16, 20) KiB at once; the one in flight over [4, 8) is waited for.
  assert.equal(queue.pendingBytes, 8 * KIB + 4 * KIB);
  assert.equal(isDone, false);
  gate.release(0);
  await superseding;
  assert.equal(isDone, true);
  gate.release(0);
  await queue.drain();
});

test('mirror queue: async mode waits for room, and never holds more than its buffer', async () => {
  const bufferBytes = 64 * KIB;
  const { queue, memory } = makeQueue((m) => new Delay(m, () => 1), {
    mode: 'async',
    bufferBytes,
  });
  const random = prng(5);
  const model = Buffer.alloc(64 * KIB);
  let waited = 0;
  for (let i = 0; i < 200; i += 1) {
    const length = KIB * (1 + Math.floor(random() * 16));
    const offset = KIB * Math.floor(random() * (64 - length / KIB));
    const data = randomBytes(length, random);
    const before = queue.heldBytes;
    await put(queue, { kind: 'write', offset, data });
    if (before + length + 2 * ENTRY_OVERHEAD_BYTES > bufferBytes) waited += 1;
    data.copy(model, offset);
    assert.ok(queue.heldBytes <= bufferBytes, `held ${queue.heldBytes}`);
  }
  await queue.drain();
  assert.ok(waited > 0, 'some writes found the buffer full and waited');
  assert.ok(queue.stats.peakHeldBytes <= bufferBytes);
  assert.equal(queue.mode, 'async');
  assert.equal(queue.stats.switchesToSync, 0);
  assert.ok((await memory.read(0, 64 * KIB)).equals(model));
});

test('mirror queue: auto turns sync when full, and async again once drained', async () => {
  let gate: GatedTarget | undefined;
  const { queue, events } = makeQueue(
    (m) => {
      gate = new GatedTarget(m);
      return gate;
    },
    { mode: 'auto', bufferBytes: 16 * KIB, lagMsMax: 1 },
  );
  assert.ok(gate !== undefined);
  queue.start();
  await put(queue, write(0, 8 * KIB, 1));
  await put(queue, write(8 * KIB, 4 * KIB, 1));
  const full = await queue.reserve(queueCostOf([write(16 * KIB, 8 * KIB, 1)]));
  assert.equal(full.way, 'sync');
  assert.equal(queue.mode, 'sync');
  await gate.heldAtLeast(2);
  gate.release();
  gate.release();
  await queue.drain();
  await new Promise((r) => setTimeout(r, 5)); // the dwell: lagMsMax, 1 ms
  const again = await queue.reserve(100);
  assert.equal(again.way, 'async');
  if (again.way === 'async') queue.cancel(again);
  const modes = events.flatMap((e) => (e.type === 'mode' ? [`${e.mode}: ${e.reason}`] : []));
  assert.equal(modes.length, 3);
  assert.match(modes[0] ?? '', /^async: mirror mode auto/);
  assert.match(modes[1] ?? '', /^sync: buffer full/);
  assert.equal(modes[2], 'async: link has room again');
});

test('mirror queue: a failed target write fails once, discards the queue and reports every range lost', async () => {
  let gate: GatedTarget | undefined;
  const bench = makeQueue(
    (m) => {
      gate = new GatedTarget(m);
      return gate;
    },
    { mode: 'async', inFlightMax: 1 },
  );
  assert.ok(gate !== undefined);
  await put(bench.queue, write(0, 4 * KIB, 1));
  await gate.heldAtLeast(1);
  await put(bench.queue, write(8 * KIB, 4 * KIB, 2));
  gate.held[0]?.fail();
  await bench.queue.drain();
  assert.equal(bench.failures.length, 1);
  assert.equal(bench.queue.isClosed, true);
  assert.deepEqual(
    bench.lost.map((r) => r.offset).sort((a, b) => a - b),
    [0, 8 * KIB],
  );
  assert.equal((await bench.queue.reserve(100)).way, 'closed');
  assert.equal(bench.queue.heldBytes, 0);
});

test('mirror queue: random writes, zeroes and superseding writes through a reordering target end as the model', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      fc.constantFrom<MirrorMode>('async', 'auto'),
      fc.integer({ min: 1, max: 8 }),
      async (seed, mode, inFlightMax) => {
        const random = prng(seed);
        const sizeBytes = 64 * KIB;
        const { queue, memory } = makeQueue(
          (m) => new Delay(m, () => (random() < 0.5 ? 0 : random() * 2)),
          { mode, inFlightMax, bufferBytes: 32 * KIB, lagMsMax: 2 },
          sizeBytes,
        );
        const model = Buffer.alloc(sizeBytes);
        for (let i = 0; i < 150; i += 1) {
          const offset = Math.floor(random() * (sizeBytes - 1));
          const length = 1 + Math.floor(random() * Math.min(12 * KIB, sizeBytes - offset));
          const form: TargetWrite =
            random() < 0.8
              ? { kind: 'write', offset, data: randomBytes(length, random) }
              : { kind: 'zero', offset, length, mayTrim: random() < 0.5 };
          const admission = await queue.reserve(queueCostOf([form]));
          if (admission.way === 'async') {
            queue.enqueue(admission, [form]);
          } else {
            // What a filter's synchronous write does: supersede, then write through.
            await queue.supersede(offset, length);
            await (form.kind === 'write'
              ? memory.write(offset, form.data)
              : memory.writeZeroes(offset, length));
          }
          if (form.kind === 'write') form.data.copy(model, offset);
          else model.fill(0, offset, offset + length);
          if (random() < 0.1) await new Promise((r) => setTimeout(r, 1));
        }
        await queue.drain();
        assert.ok((await memory.read(0, sizeBytes)).equals(model), 'target equals the model');
        assert.equal(queue.heldBytes, 0);
        assert.ok(queue.stats.peakHeldBytes <= 32 * KIB);
      },
    ),
    propertyOptions(60),
  );
});
