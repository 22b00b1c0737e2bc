import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { Delay } from '../../src/block/delay.js';
import type { BlockDevice } from '../../src/block/device.js';
import type { DirtyBitmap } from '../../src/block/dirty-bitmap.js';
import { BlockErrorCode, isBlockError } from '../../src/block/errors.js';
import { FaultInjector } from '../../src/block/fault.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Overlay } from '../../src/block/overlay.js';
import { prng, propertyOptions, randomBytes } from './random.js';

const SIZE_BYTES = 1024 * 1024;
/** The memory device's page: a log's allocated extents then equal its presence map exactly. */
const GRANULE = 64 * 1024;

/** A base filled with random data, and the model of what it holds. */
async function filledBase(random: () => number): Promise<{ base: MemoryDevice; model: Buffer }> {
  const base = new MemoryDevice(SIZE_BYTES);
  const model = randomBytes(SIZE_BYTES, random);
  await base.write(0, model);
  return { base, model: Buffer.from(model) };
}

/** Counts flushes and FUA writes reaching a device. */
class Counting extends PassThrough {
  flushes = 0;
  override flush(): Promise<void> {
    this.flushes += 1;
    return super.flush();
  }
}

/** `[offset, end)` runs a bitmap marks. */
function presentRanges(bitmap: DirtyBitmap): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  let at = 0;
  for (;;) {
    const run = bitmap.nextDirty(at, bitmap.sizeBytes);
    if (run === null) return out;
    out.push([run.offset, run.offset + run.length]);
    at = run.offset + run.length;
  }
}

/** `[offset, end)` runs a device reports allocated (data or zero), merged. */
async function allocatedRanges(device: BlockDevice): Promise<Array<[number, number]>> {
  const out: Array<[number, number]> = [];
  for (const extent of await device.extents(0, device.size)) {
    if (extent.kind === 'hole') continue;
    const last = out[out.length - 1];
    if (last && last[1] === extent.offset) last[1] = extent.offset + extent.length;
    else out.push([extent.offset, extent.offset + extent.length]);
  }
  return out;
}

describe('Overlay', () => {
  it('reads each granule from the newest log that holds it, else from the base', async () => {
    const random = prng(1);
    const { base, model } = await filledBase(random);
    const log1 = new MemoryDevice(SIZE_BYTES);
    const log2 = new MemoryDevice(SIZE_BYTES);
    const overlay = new Overlay(base, log1, { granularityBytes: GRANULE });
    const first = randomBytes(3 * GRANULE, random);
    await overlay.write(GRANULE, first);
    first.copy(model, GRANULE);
    overlay.pushLog(log2);
    const second = randomBytes(GRANULE, random);
    await overlay.write(2 * GRANULE, second);
    second.copy(model, 2 * GRANULE);

    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
    // A read inside one layer, and one across all three.
    assert.deepEqual(
      await overlay.read(GRANULE + 5, 100),
      model.subarray(GRANULE + 5, GRANULE + 105),
    );
    assert.deepEqual(
      await overlay.read(GRANULE / 2, 3 * GRANULE),
      model.subarray(GRANULE / 2, GRANULE / 2 + 3 * GRANULE),
    );
    assert.deepEqual(presentRanges(overlay.logs[0]?.present ?? assert.fail()), [
      [GRANULE, 4 * GRANULE],
    ]);
    assert.deepEqual(presentRanges(overlay.newestLog.present), [[2 * GRANULE, 3 * GRANULE]]);
    assert.equal(log2.allocatedBytes, GRANULE);
  });

  it('a partial write copies the rest of its granule from below, and never writes the base', async () => {
    const random = prng(2);
    const { base, model } = await filledBase(random);
    const before = Buffer.from(model);
    const log = new MemoryDevice(SIZE_BYTES);
    const overlay = new Overlay(base, log, { granularityBytes: GRANULE });
    const data = randomBytes(10, random);
    await overlay.write(GRANULE + 100, data);
    data.copy(model, GRANULE + 100);

    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
    assert.deepEqual(await log.read(GRANULE, GRANULE), model.subarray(GRANULE, 2 * GRANULE));
    assert.deepEqual(presentRanges(overlay.newestLog.present), [[GRANULE, 2 * GRANULE]]);
    assert.deepEqual(await allocatedRanges(log), [[GRANULE, 2 * GRANULE]]);
    assert.deepEqual(await base.read(0, SIZE_BYTES), before);
    // A write across a granule boundary: both partial granules copied, nothing else.
    const across = randomBytes(GRANULE, random);
    await overlay.write(4 * GRANULE + GRANULE / 2, across);
    across.copy(model, 4 * GRANULE + GRANULE / 2);
    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
    assert.deepEqual(await allocatedRanges(log), [
      [GRANULE, 2 * GRANULE],
      [4 * GRANULE, 6 * GRANULE],
    ]);
  });

  it('concurrent partial writes to one granule all survive their read-modify-writes', async () => {
    const random = prng(3);
    const delay = (): number => random() * 0.5;
    const { base, model } = await filledBase(random);
    const log = new MemoryDevice(SIZE_BYTES);
    const overlay = new Overlay(new Delay(base, delay), new Delay(log, delay), {
      granularityBytes: GRANULE,
    });
    const writes: Promise<void>[] = [];
    // 64 writes of 1 KiB into granule 3, and 16 straddling granules 5 and 6, all at once.
    for (let i = 0; i < 64; i += 1) {
      const at = 3 * GRANULE + i * 1024;
      const data = randomBytes(1024, random);
      data.copy(model, at);
      writes.push(overlay.write(at, data));
    }
    for (let i = 0; i < 16; i += 1) {
      const at = 6 * GRANULE - 8 * 1024 + i * 1024;
      const data = randomBytes(1024, random);
      data.copy(model, at);
      writes.push(overlay.write(at, data));
    }
    await Promise.all(writes);
    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
  });

  it('stores zeroes and trims as zero data, so the log still holds those granules', async () => {
    const base = new MemoryDevice(SIZE_BYTES);
    await base.write(0, Buffer.alloc(SIZE_BYTES, 0xff));
    const model = Buffer.alloc(SIZE_BYTES, 0xff);
    const log = new MemoryDevice(SIZE_BYTES);
    const overlay = new Overlay(base, log, { granularityBytes: GRANULE });
    await overlay.writeZeroes(100, 2 * GRANULE, { mayTrim: true });
    model.fill(0, 100, 100 + 2 * GRANULE);
    await overlay.trim(5 * GRANULE, GRANULE);
    model.fill(0, 5 * GRANULE, 6 * GRANULE);

    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
    assert.deepEqual(await allocatedRanges(log), [
      [0, 3 * GRANULE],
      [5 * GRANULE, 6 * GRANULE],
    ]);
    assert.deepEqual(
      (await log.extents(0, SIZE_BYTES)).filter((extent) => extent.kind === 'zero'),
      [],
      'written as data, not as zero extents',
    );
    assert.deepEqual(await base.read(0, SIZE_BYTES), Buffer.alloc(SIZE_BYTES, 0xff));
    await assert.rejects(overlay.writeZeroes(0, GRANULE, { fastOnly: true }), {
      code: BlockErrorCode.ENOTSUP,
    });
    assert.equal(overlay.caps.zero, 'emulate');
  });

  it('pushLog, dropOldestLog and rebase keep what the guest sees', async () => {
    const random = prng(4);
    const { base, model } = await filledBase(random);
    const overlay = new Overlay(base, new MemoryDevice(SIZE_BYTES), { granularityBytes: GRANULE });
    const first = randomBytes(GRANULE + 7, random);
    await overlay.write(3 * GRANULE - 3, first);
    first.copy(model, 3 * GRANULE - 3);
    const log2 = new MemoryDevice(SIZE_BYTES);
    overlay.pushLog(log2);
    const second = randomBytes(300, random);
    await overlay.write(3 * GRANULE + 10, second);
    second.copy(model, 3 * GRANULE + 10);
    assert.equal(overlay.logs.length, 2);

    // The consolidation: a new base holding the old base with log 1 over it.
    const newBase = new MemoryDevice(SIZE_BYTES);
    await newBase.write(0, await base.read(0, SIZE_BYTES));
    const oldest = overlay.logs[0] ?? assert.fail();
    for (const [start, end] of presentRanges(oldest.present)) {
      await newBase.write(start, await oldest.device.read(start, end - start));
    }
    overlay.rebase(newBase);
    assert.equal(overlay.dropOldestLog(), oldest);
    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
    assert.throws(() => overlay.dropOldestLog(), /cannot be dropped/);

    // Writes after the drop copy-on-write from the new base.
    const third = randomBytes(5, random);
    await overlay.write(2 * GRANULE + 1, third);
    third.copy(model, 2 * GRANULE + 1);
    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
  });

  it('refuses pushLog while a guest write is in flight', async () => {
    const base = new MemoryDevice(SIZE_BYTES);
    const overlay = new Overlay(base, new Delay(new MemoryDevice(SIZE_BYTES), () => 5), {
      granularityBytes: GRANULE,
    });
    const writing = overlay.write(0, Buffer.alloc(10, 1));
    assert.throws(() => overlay.pushLog(new MemoryDevice(SIZE_BYTES)), /in flight/);
    await writing;
    overlay.pushLog(new MemoryDevice(SIZE_BYTES));
  });

  it('flush reaches every log written since its last flush, a dropped one too; FUA flushes', async () => {
    const base = new Counting(new MemoryDevice(SIZE_BYTES));
    const log1 = new Counting(new MemoryDevice(SIZE_BYTES));
    const log2 = new Counting(new MemoryDevice(SIZE_BYTES));
    const overlay = new Overlay(base, log1, { granularityBytes: GRANULE });
    await overlay.flush();
    assert.equal(log1.flushes, 0, 'nothing written, nothing to flush');
    await overlay.write(0, Buffer.alloc(10, 1));
    overlay.pushLog(log2);
    overlay.rebase(new MemoryDevice(SIZE_BYTES));
    overlay.dropOldestLog();
    await overlay.flush();
    assert.equal(log1.flushes, 1, 'the dropped log took a write before the flush');
    assert.equal(log2.flushes, 0);
    await overlay.flush();
    assert.equal(log1.flushes, 1);
    await overlay.write(GRANULE, Buffer.alloc(10, 2), { fua: true });
    assert.equal(log2.flushes, 1, 'FUA flushes the log');
    assert.equal(base.flushes, 0, 'the base is never written, so never flushed');
  });

  it('reports data where a log holds a granule, and the base map elsewhere', async () => {
    const base = new MemoryDevice(SIZE_BYTES);
    await base.write(8 * GRANULE, Buffer.alloc(GRANULE, 1));
    const overlay = new Overlay(base, new MemoryDevice(SIZE_BYTES), { granularityBytes: GRANULE });
    await overlay.write(GRANULE + 1, Buffer.alloc(1, 9));
    await overlay.writeZeroes(2 * GRANULE, GRANULE);
    assert.deepEqual(await overlay.extents(0, SIZE_BYTES), [
      { offset: 0, length: GRANULE, kind: 'hole' },
      { offset: GRANULE, length: 2 * GRANULE, kind: 'data' },
      { offset: 3 * GRANULE, length: 5 * GRANULE, kind: 'hole' },
      { offset: 8 * GRANULE, length: GRANULE, kind: 'data' },
      { offset: 9 * GRANULE, length: SIZE_BYTES - 9 * GRANULE, kind: 'hole' },
    ]);
    assert.deepEqual(await overlay.extents(GRANULE + 5, 10), [
      { offset: GRANULE + 5, length: 10, kind: 'data' },
    ]);
  });

  it('a failed log write fails the request, reports it, and leaves the granule unmarked', async () => {
    const random = prng(5);
    const { base, model } = await filledBase(random);
    const log = new FaultInjector(new MemoryDevice(SIZE_BYTES), { code: BlockErrorCode.ENOSPC });
    const failures: unknown[] = [];
    const overlay = new Overlay(base, log, {
      granularityBytes: GRANULE,
      onFailure: (error) => failures.push(error),
    });
    log.arm();
    await assert.rejects(overlay.write(10, Buffer.alloc(10, 7)), { code: BlockErrorCode.ENOSPC });
    assert.equal(failures.length, 1);
    assert.ok(overlay.newestLog.present.isClean);
    assert.deepEqual(await overlay.read(0, SIZE_BYTES), model);
  });

  it('keeps a read-only base read-only, after a rebase onto a writable device too', async () => {
    const base = new MemoryDevice(SIZE_BYTES, { isReadOnly: true });
    const overlay = new Overlay(base, new MemoryDevice(SIZE_BYTES), { granularityBytes: GRANULE });
    overlay.rebase(new MemoryDevice(SIZE_BYTES));
    assert.equal(overlay.caps.isReadOnly, true);
    await assert.rejects(overlay.write(0, Buffer.alloc(1)), { code: BlockErrorCode.EPERM });
    await assert.rejects(overlay.trim(0, 1), { code: BlockErrorCode.EPERM });
    assert.ok(overlay.newestLog.present.isClean);
  });

  it('close refuses later calls and closes neither the base nor the logs', async () => {
    const base = new MemoryDevice(SIZE_BYTES);
    const log = new MemoryDevice(SIZE_BYTES);
    const overlay = new Overlay(base, log, { granularityBytes: GRANULE });
    await overlay.write(0, Buffer.alloc(10, 1));
    await overlay.close();
    await assert.rejects(overlay.read(0, 10), (error: unknown) => {
      return isBlockError(error) && error.code === BlockErrorCode.ESHUTDOWN;
    });
    await assert.rejects(overlay.write(0, Buffer.alloc(1)), { code: BlockErrorCode.ESHUTDOWN });
    await base.read(0, 10);
    assert.deepEqual(await log.read(0, 10), Buffer.alloc(10, 1));
  });

  it('matches a model under concurrent random mutations and log pushes; logs hold whole granules', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 2 ** 31 - 1 }), async (seed) => {
        const random = prng(seed);
        const delay = (): number => (random() < 0.5 ? 0 : random() * 0.2);
        const { base, model } = await filledBase(random);
        const memories = [new MemoryDevice(SIZE_BYTES)];
        const overlay = new Overlay(
          new Delay(base, delay),
          new Delay(memories[0] ?? assert.fail(), delay),
          {
            granularityBytes: GRANULE,
          },
        );
        for (let batch = 0; batch < 6; batch += 1) {
          await Promise.all(randomBatch(random).map((op) => applyOp(overlay, model, op, random)));
          if (random() < 0.5) {
            const memory = new MemoryDevice(SIZE_BYTES);
            memories.push(memory);
            overlay.pushLog(new Delay(memory, delay));
          }
        }
        assert.ok((await overlay.read(0, SIZE_BYTES)).equals(model), 'overlay reads as the model');
        for (const [index, log] of overlay.logs.entries()) {
          const memory = memories[index] ?? assert.fail();
          assert.deepEqual(await allocatedRanges(memory), presentRanges(log.present));
        }
      }),
      propertyOptions(30),
    );
  });
});

interface Op {
  readonly kind: 'write' | 'zero' | 'trim' | 'read';
  readonly offset: number;
  readonly length: number;
}

/** Up to 8 mutations and reads on disjoint byte ranges that often share granules. */
function randomBatch(random: () => number): Op[] {
  const cuts = new Set<number>();
  const count = 1 + Math.floor(random() * 8);
  const center = Math.floor(random() * SIZE_BYTES);
  const spread = random() < 0.5 ? GRANULE : SIZE_BYTES / 4;
  while (cuts.size < 2 * count) {
    const cut = Math.floor(center + (random() - 0.5) * spread);
    cuts.add(Math.max(0, Math.min(SIZE_BYTES, cut)));
  }
  const sorted = [...cuts].sort((a, b) => a - b);
  const ops: Op[] = [];
  for (let i = 0; i + 1 < sorted.length; i += 2) {
    const offset = sorted[i] ?? 0;
    const length = (sorted[i + 1] ?? 0) - offset;
    if (length <= 0) continue;
    const pick = random();
    const kind = pick < 0.5 ? 'write' : pick < 0.6 ? 'zero' : pick < 0.7 ? 'trim' : 'read';
    ops.push({ kind, offset, length });
  }
  return ops;
}

async function applyOp(overlay: Overlay, model: Buffer, op: Op, random: () => number) {
  const { offset, length } = op;
  // Start at a random turn, so reads land while copy-on-writes of their granules are half done.
  for (let turns = Math.floor(random() * 6); turns > 0; turns -= 1) {
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (op.kind === 'write') {
    const data = randomBytes(length, random);
    await overlay.write(offset, data);
    data.copy(model, offset);
  } else if (op.kind === 'zero') {
    await overlay.writeZeroes(offset, length, { mayTrim: random() < 0.5 });
    model.fill(0, offset, offset + length);
  } else if (op.kind === 'trim') {
    await overlay.trim(offset, length);
    model.fill(0, offset, offset + length);
  } else {
    // No other op of the batch touches these bytes, though some share their granules.
    const expected = Buffer.from(model.subarray(offset, offset + length));
    const data = await overlay.read(offset, length);
    assert.ok(data.equals(expected), `read at ${offset}+${length} racing writes to its granules`);
  }
}
