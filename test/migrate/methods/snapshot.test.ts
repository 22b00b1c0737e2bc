import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { BlockErrorCode } from '../../../src/block/errors.js';
import { FaultInjector } from '../../../src/block/fault.js';
import { MemoryDevice } from '../../../src/block/memory.js';
import { Overlay } from '../../../src/block/overlay.js';
import { createRawImage, openRawFile, type RawFileDevice } from '../../../src/block/raw-file.js';
import { applyRedoLog } from '../../../src/migrate/methods/snapshot.js';
import type { MigrationEvent } from '../../../src/migrate/migration.js';
import { makeTempDir } from '../../host/temp-dir.js';
import {
  assertRaced,
  assertSameBytes,
  assertStunCopiedAtMost,
  type BenchDisk,
  benchShapeArb,
  cancelAfterCopyStarts,
  checkMoved,
  checkOnSource,
  expectCancelRollsBack,
  expectTargetFailure,
  granuleBytesOf,
  makeBenchDisk,
  migrateUnderLoad,
  prng,
  propertyOptions,
  randomBytes,
  startMigration,
  TARGET_FAULT_CODES,
} from '../harness.js';

function sourceImage(bench: BenchDisk): Promise<Buffer> {
  return bench.sourceMemory.read(0, bench.model.length);
}

/**
 * Takes each disk's source image when its base copy starts: the overlay is interposed then, and
 * from then on nothing may write the source (the guest writes it freely before). A memory
 * device's read copies synchronously, so the image is the one at the event.
 */
function freezeWatcher(benches: readonly BenchDisk[]): {
  onEvent: (event: MigrationEvent) => void;
  images: Promise<Buffer>[];
} {
  const images: Promise<Buffer>[] = [];
  const onEvent = (event: MigrationEvent): void => {
    if (event.type !== 'phase' || event.phase !== 'copy') return;
    const bench = benches[images.length];
    assert.ok(bench !== undefined, 'one base copy per disk');
    images.push(sourceImage(bench));
  };
  return { onEvent, images };
}

/** The source must still read as it did when the overlay froze it. */
async function checkFrozen(bench: BenchDisk, image: Promise<Buffer> | undefined): Promise<void> {
  assert.ok(image !== undefined, 'the base copy started');
  assertSameBytes(await sourceImage(bench), await image, 'source (frozen by the redo logs)');
}

function phasesOf(events: readonly MigrationEvent[]): string[] {
  return events.flatMap((event) => (event.type === 'phase' ? [event.phase] : []));
}

test('snapshot: the destination equals the model after switchover, and the source stays frozen', async () => {
  let roundsSeen = 0;
  await fc.assert(
    fc.asyncProperty(
      benchShapeArb(),
      fc.constantFrom(0, 100),
      fc.integer({ min: 1, max: 4 }),
      async ({ seed, sizeBytes, chunkBytes, inFlightMax }, downtimeTargetMs, passMax) => {
        const random = prng(seed);
        const bench = await makeBenchDisk('vm1', { sizeBytes, random, waitsForRace: true });
        const frozen = freezeWatcher([bench]);
        const { result, events, races } = await migrateUnderLoad([bench], random, {
          method: 'snapshot',
          chunkBytes,
          inFlightMax,
          tuning: { downtimeTargetMs, passMax },
          onEvent: frozen.onEvent,
        });
        await checkMoved(bench);
        await checkFrozen(bench, frozen.images[0]);
        assert.equal(result.method, 'snapshot');
        const race = races[0] ?? assert.fail('one disk');
        assertRaced(race, seed);
        // The stun copies the newest redo log only: what the guest wrote since the last swap
        // (the hold before the stun; the interpose if no round ran), in 4 KiB grains.
        const swap = bench.stun.holds.at(-2) ?? assert.fail('the interpose held the guest');
        const newestLog = race.mutations.filter((mutation) => mutation.ackMs > swap.pausedMs);
        assertStunCopiedAtMost(
          race,
          granuleBytesOf(newestLog, 4096),
          'the newest redo log: the grains written since the last swap',
          seed,
        );
        const phases = phasesOf(events);
        assert.deepEqual(phases.slice(0, 2), ['copy', 'consolidate']);
        const rounds = events.filter((event) => event.type === 'pass');
        assert.equal(rounds.length, result.passes);
        assert.ok(result.passes <= passMax);
        roundsSeen += result.passes;
      },
    ),
    propertyOptions(35),
  );
  assert.ok(roundsSeen > 0, 'some runs consolidated while the guest wrote');
});

test('snapshot: two disks, the first brought back in step after the second converged', async () => {
  for (const seed of [21, 22, 23]) {
    const random = prng(seed);
    const benches = [
      await makeBenchDisk('vm1-a', { sizeBytes: 512 * 1024, random }),
      await makeBenchDisk('vm1-b', { sizeBytes: 256 * 1024 + 8192, random }),
    ];
    const frozen = freezeWatcher(benches);
    const { events } = await migrateUnderLoad(benches, random, {
      method: 'snapshot',
      tuning: { downtimeTargetMs: 0, passMax: 2 },
      onEvent: frozen.onEvent,
    });
    for (const [index, bench] of benches.entries()) {
      await checkMoved(bench);
      await checkFrozen(bench, frozen.images[index]);
    }
    // Disk 1 converges, disk 2 converges, disk 1 converges again.
    assert.deepEqual(phasesOf(events).slice(0, 5), [
      'copy',
      'consolidate',
      'copy',
      'consolidate',
      'consolidate',
    ]);
  }
});

test('snapshot: applyRedoLog replays every log, oldest first, onto the base from extents alone', async () => {
  const sizeBytes = 2 * 1024 * 1024;
  const granule = 64 * 1024; // the memory device's page, so its extents are its presence map
  const random = prng(31);
  const base = new MemoryDevice(sizeBytes);
  await base.write(0, randomBytes(sizeBytes, random));
  const logs = [new MemoryDevice(sizeBytes)];
  const overlay = new Overlay(base, logs[0] ?? assert.fail(), { granularityBytes: granule });
  for (let round = 0; round < 3; round += 1) {
    for (let i = 0; i < 20; i += 1) {
      const offset = Math.floor(random() * (sizeBytes - 1));
      const length = 1 + Math.floor(random() * Math.min(200 * 1024, sizeBytes - offset));
      if (random() < 0.8) await overlay.write(offset, randomBytes(length, random));
      else await overlay.writeZeroes(offset, length, { mayTrim: true });
    }
    const next = new MemoryDevice(sizeBytes);
    logs.push(next);
    overlay.pushLog(next);
  }
  const onto = new MemoryDevice(sizeBytes);
  await onto.write(0, await base.read(0, sizeBytes));
  let appliedBytes = 0;
  for (const log of logs) appliedBytes += await applyRedoLog(log, onto);
  assert.equal(
    appliedBytes,
    logs.reduce((sum, log) => sum + log.allocatedBytes, 0),
  );
  assertSameBytes(await onto.read(0, sizeBytes), await overlay.read(0, sizeBytes), 'replayed');
});

test('snapshot: applyRedoLog on thin raw-file logs: their allocation is what the overlay wrote', async () => {
  const sizeBytes = 4 * 1024 * 1024;
  const random = prng(32);
  const dir = await makeTempDir();
  const open = async (name: string): Promise<RawFileDevice> => {
    await createRawImage(join(dir, name), sizeBytes, 'thin');
    return openRawFile(join(dir, name), { provisioning: 'thin' });
  };
  const base = await open('base.raw');
  await base.write(0, randomBytes(sizeBytes, random));
  const logs = [await open('redo-1.raw')];
  // 16 KiB granules: larger than a filesystem block, smaller than the memory device's pages.
  const overlay = new Overlay(base, logs[0] ?? assert.fail(), { granularityBytes: 16 * 1024 });
  try {
    for (let round = 0; round < 3; round += 1) {
      for (let i = 0; i < 30; i += 1) {
        const offset = Math.floor(random() * (sizeBytes - 1));
        const length = 1 + Math.floor(random() * Math.min(100 * 1024, sizeBytes - offset));
        if (random() < 0.7) await overlay.write(offset, randomBytes(length, random));
        else await overlay.trim(offset, length);
      }
      const next = await open(`redo-${round + 2}.raw`);
      logs.push(next);
      overlay.pushLog(next);
    }
    await overlay.flush();
    const expected = await overlay.read(0, sizeBytes);
    let appliedBytes = 0;
    for (const log of logs) appliedBytes += await applyRedoLog(log, base);
    const presentBytes = overlay.logs.reduce((sum, log) => sum + log.present.dirtyBytes, 0);
    assert.equal(appliedBytes, presentBytes, 'allocated bytes are exactly the present granules');
    assertSameBytes(await base.read(0, sizeBytes), expected, 'base after replaying the log files');
  } finally {
    for (const device of [base, ...logs]) await device.close();
  }
});

for (const phase of ['copy', 'consolidate'] as const) {
  test(`snapshot: cancel in the ${phase} phase rolls back to the source with every write`, async () => {
    await expectCancelRollsBack('snapshot', {
      seed: phase === 'copy' ? 5 : 6,
      sizeBytes: 4 * 1024 * 1024,
      speedBytesPerSecond: 32 * 1024 * 1024,
      tuning: { downtimeTargetMs: 0, passMax: 1000 },
      cancelOn:
        phase === 'copy'
          ? cancelAfterCopyStarts(30)
          : (event, migration) => {
              // Round 3 starts once log 1 and 2 were consolidated and dropped: on the target only.
              if (event.type === 'pass' && event.pass === 3) migration.cancel();
            },
    });
  });
}

for (const code of TARGET_FAULT_CODES) {
  for (const phase of ['copy', 'consolidate'] as const) {
    test(`snapshot: a destination failing with ${code} in the ${phase} phase fails the job, guest untouched`, async () => {
      const { events } = await expectTargetFailure('snapshot', {
        code,
        ...(phase === 'copy' ? { afterBytes: 512 * 1024 } : {}),
        tuning: { downtimeTargetMs: 0, passMax: 1000 },
        onEvent: (event, fault) => {
          // Round 3: logs 1 and 2 are on the target only; the rollback must replay them too.
          if (event.type === 'pass' && event.pass === 3 && phase === 'consolidate') fault.arm();
        },
      });
      const rounds = events.filter((event) => event.type === 'pass').length;
      assert.equal(rounds, phase === 'copy' ? 0 : 3);
    });
  }
}

test('snapshot: a redo log that fails a write fails the job; the source holds what was acknowledged', async () => {
  const random = prng(41);
  // Full of data, so the paced base copy outlasts both guest writes (a copy of holes is instant,
  // and a slow guest write would then find the job switched over).
  const bench = await makeBenchDisk('vm1', { sizeBytes: 1024 * 1024, random, filledFraction: 1 });
  const faults: FaultInjector[] = [];
  const failing: BenchDisk = {
    ...bench,
    disk: {
      ...bench.disk,
      createScratch: async (label) => {
        const scratch = await bench.disk.createScratch(label);
        const device = new FaultInjector(scratch.device, { code: BlockErrorCode.ENOSPC });
        faults.push(device);
        return { device, remove: scratch.remove };
      },
    },
  };
  const guest = bench.disk.switch;
  let guestDone: Promise<void> | undefined;
  const migration = startMigration([failing], {
    method: 'snapshot',
    speedBytesPerSecond: 4 * 1024 * 1024,
    onEvent: (event) => {
      if (event.type !== 'phase' || event.phase !== 'copy') return;
      // In the copy phase the guest writes into log 1 (acknowledged), then log 1 runs out of space.
      guestDone = (async () => {
        const data = randomBytes(10_000, random);
        await guest.write(70_000, data);
        data.copy(bench.model, 70_000);
        faults[0]?.arm();
        await assert.rejects(guest.write(300_000, Buffer.alloc(5, 1)), { code: 'ENOSPC' });
      })();
    },
  });
  await assert.rejects(migration.run(), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_TARGET_FAILED');
    assert.match(error.message, /redo log.*ENOSPC/);
    return true;
  });
  await guestDone;
  await checkOnSource(bench);
});
