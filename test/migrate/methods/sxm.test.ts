import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { BlockDevice, WriteOptions, ZeroOptions } from '../../../src/block/device.js';
import { BlockErrorCode } from '../../../src/block/errors.js';
import { FaultInjector } from '../../../src/block/fault.js';
import { PassThrough } from '../../../src/block/filter.js';
import { MemoryDevice } from '../../../src/block/memory.js';
import type { MigrationEvent } from '../../../src/migrate/migration.js';
import {
  assertRaced,
  assertStunCopiedAtMost,
  type BenchDisk,
  benchShapeArb,
  CopyWatch,
  cancelAfterCopyStarts,
  checkMoved,
  expectCancelRollsBack,
  expectTargetFailure,
  expectThinStaysThin,
  makeBenchDisk,
  migrateUnderLoad,
  prng,
  propertyOptions,
  randomBytes,
  startMigration,
  TARGET_FAULT_CODES,
  WatchedSwitch,
} from '../harness.js';

const KIB = 1024;

test('sxm: after switchover the destination equals the model, whatever the guest did', async () => {
  await fc.assert(
    fc.asyncProperty(
      // Mirrored writes place granules, which the copy then skips: on a smaller disk this guest
      // places every granule before the walk reaches it, and nothing races the copy.
      benchShapeArb([1024 * KIB + 4096, 2048 * KIB]),
      fc.constantFrom(4 * KIB, 16 * KIB),
      fc.integer({ min: 1, max: 2 }),
      async ({ seed, sizeBytes, chunkBytes, inFlightMax }, granularityBytes, diskCount) => {
        const random = prng(seed);
        const benches: BenchDisk[] = [];
        for (let i = 0; i < diskCount; i += 1) {
          benches.push(await makeBenchDisk(`disk${i}`, { sizeBytes, random, waitsForRace: true }));
        }
        const { result, events, races } = await migrateUnderLoad(benches, random, {
          method: 'sxm',
          chunkBytes,
          inFlightMax,
          tuning: { granularityBytes },
        });
        for (const bench of benches) await checkMoved(bench);
        assert.equal(result.method, 'sxm');
        for (const race of races) {
          assertRaced(race, seed);
          // Every write since the snapshot was mirrored synchronously and the walk is done: the
          // stun has nothing to copy.
          assertStunCopiedAtMost(race, 0, 'a synchronous sxm has nothing left at switchover', seed);
        }
        const modes = events.filter((event) => event.type === 'mode');
        assert.equal(modes.length, diskCount, 'each disk enters snapshot+mirror once');
      },
    ),
    propertyOptions(40),
  );
});

/** Records each write that reaches the target, and slows the ones that touch `slow`. */
class TargetWatch extends PassThrough {
  readonly landed: Array<{ offset: number; length: number }> = [];
  slow: { offset: number; length: number; delayMs: number } | undefined;

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await this.pace(offset, data.length);
    await this.next.write(offset, data, options);
    this.landed.push({ offset, length: data.length });
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    await this.pace(offset, length);
    await this.next.writeZeroes(offset, length, options);
    this.landed.push({ offset, length });
  }

  private async pace(offset: number, length: number): Promise<void> {
    const slow = this.slow;
    if (slow === undefined || offset >= slow.offset + slow.length || slow.offset >= offset + length)
      return;
    await new Promise((resolve) => setTimeout(resolve, slow.delayMs));
  }
}

/** Calls `onRead` as each read starts (the copy's reads of the source). */
class SourceHook extends PassThrough {
  onRead: ((offset: number, length: number) => void) | undefined;

  override read(offset: number, length: number): Promise<Buffer> {
    this.onRead?.(offset, length);
    return this.next.read(offset, length);
  }
}

/** A bench disk built by hand, for tests that must control one device's timing. */
async function handBench(
  sizeBytes: number,
  wrap: { source?: (d: BlockDevice) => BlockDevice; target?: (d: BlockDevice) => BlockDevice },
): Promise<BenchDisk> {
  const random = prng(3);
  const sourceMemory = new MemoryDevice(sizeBytes);
  const model = randomBytes(sizeBytes, random);
  await sourceMemory.write(0, model);
  const targetMemory = new MemoryDevice(sizeBytes);
  const source = wrap.source ? wrap.source(sourceMemory) : sourceMemory;
  const stun = new WatchedSwitch(source);
  const copyWatch = new CopyWatch(targetMemory, () => stun);
  const target = wrap.target ? wrap.target(copyWatch) : copyWatch;
  const disk = {
    name: 'vm1',
    switch: stun,
    source,
    target,
    targetTop: targetMemory,
    createScratch: async () => assert.fail('sxm needs no scratch device'),
  };
  return { disk, sourceMemory, targetMemory, model, scratches: [], stun, copyWatch };
}

test('sxm: the copy never overwrites a granule a mirrored write placed while the chunk waited', async () => {
  const chunkBytes = 64 * KIB;
  const granularityBytes = 16 * KIB;
  let hook: SourceHook | undefined;
  let watch: TargetWatch | undefined;
  const bench = await handBench(1024 * KIB, {
    source: (device) => {
      hook = new SourceHook(device);
      return hook;
    },
    target: (device) => {
      watch = new TargetWatch(device);
      return watch;
    },
  });
  assert.ok(hook !== undefined && watch !== undefined);
  // The guest writes a part of chunk 5's first granule while chunk 4 is being read; its target
  // side is slow, so the walk picks chunk 5 (all of it still unplaced) and waits on the hold.
  const granuleAt = 5 * chunkBytes;
  const writeAt = granuleAt + 1000;
  const data = randomBytes(3000, prng(9));
  let guestWrite: Promise<void> | undefined;
  hook.onRead = (offset) => {
    if (offset !== 4 * chunkBytes || guestWrite !== undefined || watch === undefined) return;
    watch.slow = { offset: granuleAt, length: granularityBytes, delayMs: 40 };
    guestWrite = bench.disk.switch.write(writeAt, data).then(() => {
      data.copy(bench.model, writeAt);
    });
  };
  const migration = startMigration([bench], {
    method: 'sxm',
    chunkBytes,
    inFlightMax: 1,
    tuning: { granularityBytes },
  });
  await migration.run();
  assert.ok(guestWrite !== undefined, 'the guest write was issued during the copy');
  await guestWrite;
  await checkMoved(bench);
  // On that granule the target saw the guest's write and the two fills that make the granule
  // whole around it, and nothing else: the copy of chunk 5 left it alone.
  const granuleEnd = granuleAt + granularityBytes;
  const onGranule = watch.landed
    .filter((write) => write.offset < granuleEnd && granuleAt < write.offset + write.length)
    .sort((a, b) => a.offset - b.offset);
  assert.deepEqual(onGranule, [
    { offset: granuleAt, length: 1000 },
    { offset: writeAt, length: 3000 },
    { offset: writeAt + 3000, length: granuleEnd - writeAt - 3000 },
  ]);
  assert.ok(
    watch.landed.some((write) => write.offset === granuleEnd),
    'the rest of chunk 5 was copied, from the next granule on',
  );
});

test('sxm: a thin source stays thin on the destination', async () => {
  await expectThinStaysThin('sxm');
});

test('sxm: a destination that fails with EIO or ENOSPC fails the job and leaves the guest on the source', async () => {
  for (const code of TARGET_FAULT_CODES) {
    await expectTargetFailure('sxm', { code, afterBytes: 512 * KIB });
  }
});

test('sxm: a destination that fails under mirrored writes never fails the guest', async () => {
  const { fault } = await expectTargetFailure('sxm', {
    code: BlockErrorCode.EIO,
    seed: 13,
    speedBytesPerSecond: 4 * 1024 * KIB,
    onEvent: (event, armable) => {
      if (event.type === 'phase' && event.phase === 'copy') setTimeout(() => armable.arm(), 30);
    },
  });
  assert.ok(fault.failures > 0);
});

test('sxm: a write the source refused is copied again from the source when the disk re-converges', async () => {
  let fault: FaultInjector | undefined;
  const first = await handBench(256 * KIB, {
    source: (device) => {
      fault = new FaultInjector(device, { code: BlockErrorCode.EIO });
      return fault;
    },
  });
  // A hole under the refused write: copying it again must zero what the target took alone.
  await first.sourceMemory.writeZeroes(64 * KIB, 64 * KIB, { mayTrim: true });
  first.model.fill(0, 64 * KIB, 128 * KIB);
  const second = await makeBenchDisk('vm2', {
    sizeBytes: 2 * 1024 * KIB,
    random: prng(17),
    filledFraction: 1,
  });
  // While the second disk copies, the first is mirrored and fully copied: a write there that the
  // source refuses lands on the target alone, which must not keep it.
  let refused: Promise<void> | undefined;
  let copyPhases = 0;
  const onEvent = (event: MigrationEvent): void => {
    if (event.type !== 'phase' || event.phase !== 'copy') return;
    copyPhases += 1;
    if (copyPhases !== 2 || fault === undefined) return;
    const armed = fault;
    armed.arm();
    refused = assert
      .rejects(first.disk.switch.write(70 * KIB + 123, Buffer.alloc(20 * KIB, 0xa5)), {
        code: 'EIO',
      })
      .finally(() => armed.disarm());
  };
  const migration = startMigration([first, second], {
    method: 'sxm',
    speedBytesPerSecond: 8 * 1024 * KIB,
    onEvent,
  });
  await migration.run();
  assert.ok(refused !== undefined, 'the refused write was issued');
  await refused;
  await checkMoved(first);
  await checkMoved(second);
});

test('sxm: cancel mid-copy rolls back to the source with every write', async () => {
  await expectCancelRollsBack('sxm', {
    seed: 5,
    sizeBytes: 4 * 1024 * KIB,
    speedBytesPerSecond: 8 * 1024 * KIB,
    cancelOn: cancelAfterCopyStarts(50),
  });
});
