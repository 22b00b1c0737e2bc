import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { DirtyBitmap } from '../../src/block/dirty-bitmap.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { RangeLock } from '../../src/block/range-lock.js';
import { Copier, type CopierOptions } from '../../src/migrate/copier.js';
import { Progress } from '../../src/migrate/progress.js';
import { prng, randomBytes } from '../block/random.js';
import { assertSameBytes } from './harness.js';

const KIB = 1024;

interface Rig {
  readonly source: MemoryDevice;
  readonly target: MemoryDevice;
  readonly progress: Progress;
  readonly copier: Copier;
  readonly data: Buffer;
}

/** A source full of random data, an empty target, and a copier between them. */
async function rig(
  sizeBytes: number,
  granularityBytes: number,
  options: Partial<CopierOptions> = {},
): Promise<Rig> {
  const source = new MemoryDevice(sizeBytes);
  const data = randomBytes(sizeBytes, prng(sizeBytes));
  await source.write(0, data);
  const target = new MemoryDevice(sizeBytes);
  const progress = new Progress(sizeBytes);
  const touched = new DirtyBitmap(sizeBytes, granularityBytes);
  const copier = new Copier(source, target, { touched, progress, ...options });
  return { source, target, progress, copier, data };
}

function allDirty(sizeBytes: number, granularityBytes: number): DirtyBitmap {
  const bitmap = new DirtyBitmap(sizeBytes, granularityBytes);
  bitmap.markAll();
  return bitmap;
}

test('copier: a chunk size that is no multiple of the granule still copies every byte', async () => {
  const sizeBytes = 1024 * KIB;
  const { target, copier, data } = await rig(sizeBytes, 64 * KIB, { chunkBytes: 100 * KIB });
  const bitmap = allDirty(sizeBytes, 64 * KIB);
  await copier.copyPass(bitmap);
  assert.ok(bitmap.isClean);
  assertSameBytes(await target.read(0, sizeBytes), data, 'target');
});

test('copier: under recheckUnderLock a chunk copies only what is still dirty once it holds the lock', async () => {
  const sizeBytes = 256 * KIB;
  const granule = 16 * KIB;
  const { target, progress, copier, data } = await rig(sizeBytes, granule, {
    chunkBytes: 64 * KIB,
    inFlightMax: 1,
  });
  const bitmap = allDirty(sizeBytes, granule);
  const lock = new RangeLock();
  // Someone holds a granule of the second chunk, places it on the target and clears it meanwhile.
  const placedAt = 64 * KIB + granule;
  const placed = Buffer.alloc(granule, 0x5a);
  const release = await lock.acquire(placedAt, granule);
  const pass = copier.copyPass(bitmap, { lock, recheckUnderLock: true });
  await new Promise((resolve) => setTimeout(resolve, 5));
  await target.write(placedAt, placed);
  bitmap.clear(placedAt, granule);
  release();
  await pass;
  assert.ok(bitmap.isClean);
  const expected = Buffer.from(data);
  placed.copy(expected, placedAt);
  assertSameBytes(await target.read(0, sizeBytes), expected, 'target');
  assert.equal(progress.doneBytes, sizeBytes - granule, 'only what it copied counts');
});

test('copier: a pass `from` another device copies its runs, counts them, and follows setSpeed at once', async () => {
  const sizeBytes = 512 * KIB;
  const granule = 64 * KIB;
  // 16 KiB/s: after the first read, each of the other two would wait 4 s at that speed.
  const { target, copier } = await rig(sizeBytes, granule, {
    chunkBytes: 64 * KIB,
    speedBytesPerSecond: 16 * KIB,
  });
  const log = new MemoryDevice(sizeBytes);
  const logged = randomBytes(3 * granule, prng(5));
  await log.write(granule, logged);
  const present = new DirtyBitmap(sizeBytes, granule);
  present.mark(granule, 3 * granule);
  const pass = copier.copyPass(present, { from: log });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.ok(copier.copiedBytes < 3 * granule, 'the pass is held by the speed limit');
  copier.setSpeed(0);
  const releasedMs = performance.now();
  await pass;
  assert.ok(performance.now() - releasedMs < 1000, 'the new speed applied to waiting reads');
  assert.equal(copier.copiedBytes, 3 * granule);
  assertSameBytes(await target.read(granule, 3 * granule), logged, 'target');
  assert.equal(target.allocatedBytes, 3 * granule, 'nothing else was written');
});

test('copier: a cancel does not wait for the throttle: reads queued for tokens go at once', async () => {
  const sizeBytes = 4096 * KIB;
  const abort = new AbortController();
  // 256 KiB/s: the whole disk would take 16 s, and a queued 64 KiB read a quarter second.
  const { copier } = await rig(sizeBytes, 64 * KIB, {
    chunkBytes: 64 * KIB,
    inFlightMax: 8,
    speedBytesPerSecond: 256 * KIB,
    signal: abort.signal,
  });
  const pass = copier.copyPass(allDirty(sizeBytes, 64 * KIB));
  await new Promise((resolve) => setTimeout(resolve, 100));
  const cancelledAtMs = performance.now();
  abort.abort();
  await assert.rejects(pass, { code: 'ERR_CANCELLED' });
  const tookMs = performance.now() - cancelledAtMs;
  assert.ok(tookMs < 100, `the pass stopped ${tookMs.toFixed(0)} ms after the cancel`);
});

/** A memory source that counts its extents calls and may act on the walk's probe (`runsMax` 1). */
class ProbedSource extends MemoryDevice {
  extentsCalls = 0;
  onProbe: ((offset: number) => Promise<void>) | undefined;

  override async extents(offset: number, length: number, runsMax?: number) {
    this.extentsCalls += 1;
    const runs = await super.extents(offset, length, runsMax);
    if (runsMax === 1 && this.onProbe !== undefined) await this.onProbe(offset);
    return runs;
  }
}

test('copier: a sparse source costs a run per hole, not per chunk, and every data byte lands', async () => {
  const sizeBytes = 64 * 1024 * KIB;
  const granule = 64 * KIB;
  const source = new ProbedSource(sizeBytes);
  const data = randomBytes(256 * KIB, prng(9));
  // Four data extents 16 MiB apart, the rest holes: 64 chunks of 1 MiB before.
  for (let at = 3 * 1024 * KIB; at < sizeBytes; at += 16 * 1024 * KIB) await source.write(at, data);
  const target = new MemoryDevice(sizeBytes);
  const progress = new Progress(sizeBytes);
  const touched = new DirtyBitmap(sizeBytes, granule);
  const copier = new Copier(source, target, { touched, progress });
  const bitmap = allDirty(sizeBytes, granule);
  await copier.copyPass(bitmap);
  assert.ok(bitmap.isClean);
  assertSameBytes(await target.read(0, sizeBytes), await source.read(0, sizeBytes), 'target');
  assert.equal(progress.doneBytes, sizeBytes);
  assert.equal(copier.copiedBytes, 4 * data.length);
  assert.ok(source.extentsCalls <= 20, `${source.extentsCalls} extents calls for 4 extents`);
});

test('copier: data written into a hole after the walk probed it is still copied, a chunk at a time', async () => {
  const sizeBytes = 16 * 1024 * KIB;
  const granule = 64 * KIB;
  const source = new ProbedSource(sizeBytes);
  const target = new MemoryDevice(sizeBytes);
  const reads: number[] = [];
  const reading = source.read.bind(source);
  source.read = async (offset, length) => {
    reads.push(length);
    return reading(offset, length);
  };
  // A guest writes 3 MiB into the hole just after the walk's probe saw it whole.
  const written = randomBytes(3 * 1024 * KIB, prng(11));
  source.onProbe = async (offset) => {
    source.onProbe = undefined;
    await source.write(offset + 2 * 1024 * KIB, written);
  };
  const touched = new DirtyBitmap(sizeBytes, granule);
  const copier = new Copier(source, target, { touched, progress: new Progress(sizeBytes) });
  await copier.copyPass(allDirty(sizeBytes, granule));
  assert.ok(reads.length >= 3 && Math.max(...reads) <= copier.chunkBytes, 'a chunk at a time');
  assertSameBytes(await target.read(0, sizeBytes), await source.read(0, sizeBytes), 'target');
});
