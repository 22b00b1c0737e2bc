import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { BlockErrorCode } from '../../../src/block/errors.js';
import { FaultInjector } from '../../../src/block/fault.js';
import type { Migration } from '../../../src/migrate/migration.js';
import {
  checkMoved,
  checkOnSource,
  makeBenchDisk,
  migrateUnderLoad,
  prng,
  startMigration,
} from '../harness.js';

test('mirror: after switchover the destination equals the model, whatever the guest did', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      fc.constantFrom(256 * 1024, 1024 * 1024 + 4096),
      fc.constantFrom(16 * 1024, 64 * 1024),
      fc.integer({ min: 1, max: 8 }),
      async (seed, sizeBytes, chunkBytes, inFlightMax) => {
        const random = prng(seed);
        const bench = await makeBenchDisk('vm1', { sizeBytes, random });
        const { result, guests } = await migrateUnderLoad([bench], random, {
          method: 'mirror',
          chunkBytes,
          inFlightMax,
        });
        await checkMoved(bench);
        assert.equal(result.method, 'mirror');
        assert.ok(result.downtimeMs >= 0);
        assert.ok((guests[0]?.ops.write ?? 0) > 0, 'the guest wrote during the migration');
      },
    ),
    { numRuns: 40 },
  );
});

test('mirror: a thin source copies only its data, and zero chunks are not written', async () => {
  const random = prng(7);
  const bench = await makeBenchDisk('vm1', {
    sizeBytes: 4 * 1024 * 1024,
    random,
    filledFraction: 0.1,
  });
  await bench.sourceMemory.write(0, Buffer.alloc(64 * 1024)); // allocated, but zeros
  bench.model.fill(0, 0, 64 * 1024);
  const migration = startMigration([bench], { method: 'mirror' });
  const result = await migration.run();
  await checkMoved(bench);
  const dataBytes = bench.model.reduce(
    (n, _b, i) =>
      i % 65536 === 0 && bench.model.subarray(i, i + 65536).some((x) => x !== 0) ? n + 65536 : n,
    0,
  );
  assert.equal(result.bytesCopied, dataBytes);
  assert.equal(bench.targetMemory.allocatedBytes, dataBytes);
});

test('mirror: a destination that fails with EIO mid-copy fails the job and leaves the guest on the source', async () => {
  for (const code of [BlockErrorCode.EIO, BlockErrorCode.ENOSPC]) {
    const random = prng(11);
    const bench = await makeBenchDisk('vm1', {
      sizeBytes: 2 * 1024 * 1024,
      random,
      filledFraction: 1,
      wrapTarget: (device) => new FaultInjector(device, { code, afterBytes: 512 * 1024 }),
    });
    await assert.rejects(
      migrateUnderLoad([bench], random, { method: 'mirror' }),
      (error: Error & { code?: string }) => {
        assert.equal(error.code, 'ERR_TARGET_FAILED');
        assert.match(error.message, new RegExp(code));
        return true;
      },
    );
    await checkOnSource(bench);
  }
});

test('mirror: cancel mid-copy rolls back to the source with every write', async () => {
  const random = prng(5);
  const bench = await makeBenchDisk('vm1', {
    sizeBytes: 4 * 1024 * 1024,
    random,
    filledFraction: 1,
  });
  let migration: Migration | undefined;
  const running = migrateUnderLoad([bench], random, {
    method: 'mirror',
    speedBytesPerSecond: 8 * 1024 * 1024,
    onStart: (started) => {
      migration = started;
    },
    onEvent: (event) => {
      if (event.type === 'phase' && event.phase === 'copy')
        setTimeout(() => migration?.cancel(), 50);
    },
  });
  await assert.rejects(running, { code: 'ERR_CANCELLED' });
  await checkOnSource(bench);
  assert.equal(bench.disk.switch.isPaused, false);
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
  const result = await startMigration([bench], { method: 'mirror' }).run();
  isStopped = true;
  await hot;
  await checkMoved(bench);
  assert.ok(rewrites > 10, `the hot block was rewritten during the copy (${rewrites})`);
  assert.ok(result.passes <= 2, `finished in ${result.passes} passes`);
});
