import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { DirtyBitmap } from '../../../src/block/dirty-bitmap.js';
import { MemoryDevice } from '../../../src/block/memory.js';
import { RangeLock } from '../../../src/block/range-lock.js';
import { METHOD_TUNING_DEFAULT } from '../../../src/migrate/method.js';
import { MirrorFilter } from '../../../src/migrate/methods/mirror.js';
import {
  assertRaced,
  assertStunCopiedAtMost,
  benchShapeArb,
  cancelAfterCopyStarts,
  checkMoved,
  expectCancelRollsBack,
  expectTargetFailure,
  expectThinStaysThin,
  makeBenchDisk,
  migrateUnderLoad,
  prng,
  propertyOptions,
  startMigration,
  TARGET_FAULT_CODES,
} from '../harness.js';

test('mirror: after switchover the destination equals the model, whatever the guest did', async () => {
  await fc.assert(
    fc.asyncProperty(benchShapeArb(), async ({ seed, sizeBytes, chunkBytes, inFlightMax }) => {
      const random = prng(seed);
      const bench = await makeBenchDisk('vm1', { sizeBytes, random, waitsForRace: true });
      const { result, races } = await migrateUnderLoad([bench], random, {
        method: 'mirror',
        chunkBytes,
        inFlightMax,
      });
      await checkMoved(bench);
      assert.equal(result.method, 'mirror');
      const race = races[0] ?? assert.fail('one disk');
      assertRaced(race, seed);
      // One pass while the guest runs; mirrored writes keep copied ranges in step, so with the
      // guest drained nothing is left to copy.
      assertStunCopiedAtMost(race, 0, 'a synchronous mirror has nothing left at switchover', seed);
    }),
    propertyOptions(40),
  );
});

test('mirror: a thin source copies only its data, and zero chunks are not written', async () => {
  await expectThinStaysThin('mirror');
});

test('mirror: a destination that fails with EIO or ENOSPC mid-copy fails the job and leaves the guest on the source', async () => {
  for (const code of TARGET_FAULT_CODES) {
    await expectTargetFailure('mirror', { code, afterBytes: 512 * 1024 });
  }
});

test('mirror: cancel mid-copy rolls back to the source with every write', async () => {
  await expectCancelRollsBack('mirror', {
    seed: 5,
    sizeBytes: 4 * 1024 * 1024,
    speedBytesPerSecond: 8 * 1024 * 1024,
    cancelOn: cancelAfterCopyStarts(50),
  });
});

test('mirror: a guest rewriting one block over and over does not keep the copy from finishing', async () => {
  const random = prng(21);
  const bench = await makeBenchDisk('vm1', { sizeBytes: 1024 * 1024, random, filledFraction: 1 });
  let isStopped = false;
  let rewrites = 0;
  const hot = (async () => {
    while (!isStopped) {
      const data = Buffer.alloc(4096, rewrites % 256);
      await bench.disk.switch.write(512 * 1024, data);
      data.copy(bench.model, 512 * 1024);
      rewrites += 1;
    }
  })();
  // Paced so the copy lasts long enough (~250 ms) for the guest to rewrite the block many times,
  // even on a busy machine.
  const result = await startMigration([bench], {
    method: 'mirror',
    speedBytesPerSecond: 4 * 1024 * 1024,
  }).run();
  isStopped = true;
  await hot;
  await checkMoved(bench);
  assert.ok(rewrites > 10, `the hot block was rewritten during the copy (${rewrites})`);
  assert.ok(result.passes <= 2, `finished in ${result.passes} passes`);
});

test('mirror: the filter counts the guest writes that waited for a copy chunk, and not the chunk', async () => {
  const source = new MemoryDevice(1024 * 1024);
  const target = new MemoryDevice(1024 * 1024);
  const toCopy = new DirtyBitmap(source.size, 64 * 1024);
  const lock = new RangeLock();
  const filter = new MirrorFilter(source, target, toCopy, lock, {
    tuning: METHOD_TUNING_DEFAULT,
    emit: () => undefined,
  });
  const releaseChunk = await lock.acquire(0, 64 * 1024); // a chunk being copied
  await filter.write(128 * 1024, Buffer.alloc(4096, 1)); // elsewhere: no wait
  const waiting = filter.write(4096, Buffer.alloc(4096, 2));
  await new Promise((resolve) => setTimeout(resolve, 20));
  releaseChunk();
  await waiting;
  const stats = filter.stats;
  assert.equal(stats.lockAcquires, 2);
  assert.equal(stats.lockWaits, 1);
  assert.ok(stats.lockWaitMs >= 15, `waited about 20 ms (${stats.lockWaitMs})`);
  assert.equal(lock.waits.acquires, 3, 'the lock counts the chunk too');
  await filter.queue.close();
});
