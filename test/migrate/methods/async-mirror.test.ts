import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import type { BlockDevice, WriteOptions, ZeroOptions } from '../../../src/block/device.js';
import { BlockError, BlockErrorCode } from '../../../src/block/errors.js';
import { PassThrough } from '../../../src/block/filter.js';
import type { MethodName, MirrorMode } from '../../../src/migrate/method.js';
import type { Migration, MigrationEvent } from '../../../src/migrate/migration.js';
import {
  assertRaced,
  assertStunCopiedAtMost,
  type BenchDisk,
  benchShapeArb,
  checkMoved,
  checkOnSource,
  granuleBytesOf,
  makeBenchDisk,
  migrateUnderLoad,
  prng,
  propertyOptions,
  randomBytes,
  startMigration,
  startWriter,
} from '../harness.js';

const KIB = 1024;

/** Holds writes, zeroes and reads while closed (in arrival order); can fail what it holds. */
class Gate extends PassThrough {
  isClosed = false;
  private held: Array<{ resolve: () => void; reject: (error: Error) => void }> = [];
  private arrivals: Array<() => void> = [];

  get heldCount(): number {
    return this.held.length;
  }

  override async read(offset: number, length: number): Promise<Buffer> {
    await this.pass();
    return this.next.read(offset, length);
  }

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await this.pass();
    return this.next.write(offset, data, options);
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    await this.pass();
    return this.next.writeZeroes(offset, length, options);
  }

  /** Resolves once a request is held. */
  async arrived(): Promise<void> {
    while (this.held.length === 0) await new Promise<void>((r) => this.arrivals.push(r));
  }

  open(): void {
    this.isClosed = false;
    for (const entry of this.held.splice(0)) entry.resolve();
  }

  /** Fails what is held and everything after, as a destination gone bad. */
  fail(): void {
    this.isClosed = false;
    this.failing = true;
    for (const entry of this.held.splice(0)) entry.reject(eio());
  }

  private failing = false;

  private pass(): Promise<void> {
    if (this.failing) return Promise.reject(eio());
    if (!this.isClosed) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      this.held.push({ resolve, reject });
      for (const wake of this.arrivals.splice(0)) wake();
    });
  }
}

function eio(): BlockError {
  return new BlockError(BlockErrorCode.EIO, 'gated destination failed: EIO');
}

/** Calls `onWrite` once each source write landed. */
class SourceWatch extends PassThrough {
  onWrite: (() => void) | undefined;

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await this.next.write(offset, data, options);
    this.onWrite?.();
  }
}

for (const method of ['mirror', 'sxm'] as const) {
  test(`${method}, async and auto: under a slow destination the queue fills, writes are acknowledged ahead of it, and after switchover the destination equals the model`, async () => {
    let asyncRuns = 0;
    let switchRuns = 0;
    await fc.assert(
      fc.asyncProperty(
        // sxm places the granules the guest writes, and this guest writes all of a small disk
        // before the walk reaches it: nothing would race the copy (sxm.test.ts).
        method === 'sxm' ? benchShapeArb([2048 * KIB]) : benchShapeArb(),
        fc.constantFrom<MirrorMode>('async', 'auto'),
        fc.constantFrom(160 * KIB, 256 * KIB),
        fc.constantFrom(5, 20),
        fc.double({ min: 0.5, max: 4, noNaN: true }),
        async (shape, mirrorMode, asyncBufferBytes, asyncLagMsMax, slowMs) => {
          const random = prng(shape.seed);
          const bench = await makeBenchDisk('vm1', {
            sizeBytes: shape.sizeBytes,
            random,
            // Slow and variable: often a few ms, sometimes none, so the queue fills and drains.
            targetDelayMs: () => (random() < 0.3 ? 0 : random() * slowMs),
            waitsForRace: true,
          });
          const { mirrorStats, races } = await migrateUnderLoad([bench], random, {
            method,
            chunkBytes: shape.chunkBytes,
            inFlightMax: shape.inFlightMax,
            tuning: { mirrorMode, asyncBufferBytes, asyncLagMsMax, granularityBytes: 16 * KIB },
          });
          await checkMoved(bench);
          const race = races[0] ?? assert.fail('one disk');
          assertRaced(race, shape.seed);
          // The queue was settled before the stun; what the stun sends is what the guest had in
          // flight when it began, queued (with sxm's fills) as it drained.
          assertStunCopiedAtMost(
            race,
            granuleBytesOf(race.drained, 16 * KIB),
            'the granules of the guest requests drained into the stun',
            shape.seed,
          );
          assert.ok(mirrorStats !== undefined);
          assert.ok(
            mirrorStats.peakHeldBytes <= asyncBufferBytes,
            `held ${mirrorStats.peakHeldBytes} of ${asyncBufferBytes}`,
          );
          assert.equal(mirrorStats.heldBytes, 0, 'the switchover drained the queue');
          if (mirrorMode === 'async') assert.equal(mirrorStats.switchesToSync, 0);
          if (mirrorStats.asyncWrites > 0) asyncRuns += 1;
          if (mirrorStats.switchesToSync > 0) switchRuns += 1;
        },
      ),
      propertyOptions(20),
    );
    assert.ok(asyncRuns > 5, `writes were acknowledged while queued in ${asyncRuns} runs`);
    assert.ok(switchRuns > 0, `auto switched to sync in ${switchRuns} runs`);
  });
}

/**
 * Two disks: the first (`first`) is copied and mirrored while the second's copy is held at its
 * first source read, so the test acts on a mirrored disk for as long as it likes; `finish()`
 * lets the second copy run and resolves with the job.
 */
async function withMirroredDisk(
  method: MethodName,
  tuning: { mirrorMode: MirrorMode; asyncBufferBytes?: number; asyncLagMsMax?: number },
  options: { targetDelayMs?: () => number } = {},
): Promise<{
  first: BenchDisk;
  second: BenchDisk;
  target: Gate;
  source: SourceWatch;
  migration: Migration;
  events: MigrationEvent[];
  finish: () => Promise<void>;
}> {
  let target: Gate | undefined;
  let source: SourceWatch | undefined;
  let secondSource: Gate | undefined;
  const random = prng(31);
  const first = await makeBenchDisk('disk0', {
    sizeBytes: 256 * KIB,
    random,
    filledFraction: 1,
    ...(options.targetDelayMs === undefined ? {} : { targetDelayMs: options.targetDelayMs }),
    wrapTarget: (device: BlockDevice) => {
      target = new Gate(device);
      return target;
    },
    wrapSource: (device: BlockDevice) => {
      source = new SourceWatch(device);
      return source;
    },
  });
  const second = await makeBenchDisk('disk1', {
    sizeBytes: 256 * KIB,
    random,
    filledFraction: 1,
    wrapSource: (device: BlockDevice) => {
      secondSource = new Gate(device);
      return secondSource;
    },
  });
  assert.ok(target !== undefined && source !== undefined && secondSource !== undefined);
  const held = secondSource;
  const events: MigrationEvent[] = [];
  let copyPhases = 0;
  let onSecondCopy!: () => void;
  const secondCopy = new Promise<void>((resolve) => {
    onSecondCopy = resolve;
  });
  const migration = startMigration([first, second], {
    method,
    tuning: { ...tuning, granularityBytes: 16 * KIB },
    onEvent: (event) => {
      events.push(event);
      if (event.type !== 'phase' || event.phase !== 'copy') return;
      copyPhases += 1;
      // The first disk converged; hold the second one's copy (the gate is closed in this turn).
      if (copyPhases === 2) {
        held.isClosed = true;
        onSecondCopy();
      }
    },
  });
  const running = migration.run();
  running.catch(() => undefined);
  await secondCopy;
  return {
    first,
    second,
    target,
    source,
    migration,
    events,
    finish: async () => {
      held.open();
      await running;
    },
  };
}

for (const method of ['mirror', 'sxm'] as const) {
  test(`${method}: async acknowledges a write while the destination's write is held; sync does not`, async () => {
    for (const mirrorMode of ['async', 'sync'] as const) {
      const { first, second, target, source, migration, finish } = await withMirroredDisk(method, {
        mirrorMode,
      });
      target.isClosed = true;
      const offset = 100 * KIB + 123;
      const data = randomBytes(20 * KIB, prng(2));
      let onSource!: () => void;
      const sourceLanded = new Promise<void>((resolve) => {
        onSource = resolve;
      });
      source.onWrite = onSource;
      let isAcknowledged = false;
      const writing = first.disk.switch.write(offset, data).then(() => {
        isAcknowledged = true;
        data.copy(first.model, offset);
      });
      if (mirrorMode === 'async') {
        // Acknowledged with the gate closed: the destination cannot have it.
        await writing;
        assert.equal(isAcknowledged, true);
        const onTarget = await first.targetMemory.read(offset, data.length);
        assert.ok(!onTarget.equals(data), 'the destination does not have it yet');
        assert.ok((migration.mirrorStats?.asyncWrites ?? 0) >= 1);
        assert.ok(migration.dirtyBytes >= data.length, 'queued bytes count as still to copy');
      } else {
        // The source has it and the destination holds its write: still not acknowledged.
        await Promise.all([sourceLanded, target.arrived()]);
        await new Promise((r) => setImmediate(r));
        assert.equal(isAcknowledged, false);
        target.open();
        await writing;
      }
      target.open();
      await finish();
      await checkMoved(first);
      await checkMoved(second);
    }
  });

  test(`${method}: a destination that fails while writes are queued fails the job with ERR_TARGET_FAILED; the source has every acknowledged write`, async () => {
    const { first, target, migration, finish } = await withMirroredDisk(method, {
      mirrorMode: 'async',
    });
    target.isClosed = true;
    const writer = startWriter(first.disk.switch, first.model, 8);
    // Writes are acknowledged while the destination holds every one of them.
    while ((migration.mirrorStats?.asyncWrites ?? 0) < 20) {
      await new Promise((r) => setImmediate(r));
    }
    assert.ok((migration.mirrorStats?.heldBytes ?? 0) > 0, 'entries are queued');
    target.fail();
    const writes = await writer.stop();
    assert.ok(writes >= 20);
    await assert.rejects(finish(), (error: Error & { code?: string }) => {
      assert.equal(error.code, 'ERR_TARGET_FAILED');
      assert.match(error.message, /EIO/);
      return true;
    });
    await checkOnSource(first);
  });

  test(`${method}, auto: a slow destination turns the mirror synchronous, a fast one turns it back`, async () => {
    let slowMs = 10;
    const { first, second, events, migration, finish } = await withMirroredDisk(
      method,
      { mirrorMode: 'auto', asyncBufferBytes: 128 * KIB, asyncLagMsMax: 20 },
      { targetDelayMs: () => slowMs },
    );
    const modeEvent = (mode: 'sync' | 'async', from: number): Promise<number> =>
      new Promise((resolve) => {
        const look = (): void => {
          const index = events.findIndex(
            (event, i) => i >= from && event.type === 'mode' && event.mode === mode,
          );
          if (index >= 0) resolve(index);
          else setImmediate(look);
        };
        look();
      });
    const writer = startWriter(first.disk.switch, first.model, 9);
    const toSync = await modeEvent('sync', 0);
    slowMs = 0;
    const toAsync = await modeEvent('async', toSync);
    await writer.stop();
    await finish();
    await checkMoved(first);
    await checkMoved(second);
    const sync = events[toSync];
    const back = events[toAsync];
    assert.ok(sync?.type === 'mode' && /buffer full|destination lagging/.test(sync.reason));
    assert.ok(back?.type === 'mode' && back.reason === 'link has room again');
    assert.equal(back.queuedBytes, 0);
    const stats = migration.mirrorStats;
    assert.ok(stats !== undefined && stats.switchesToSync >= 1 && stats.switchesToAsync >= 1);
    assert.ok(stats.syncWrites > 0 && stats.asyncWrites > 0);
  });
}

test('dbt, async: the hand-over to the mirror queues writes too, and the destination equals the model', async () => {
  const random = prng(3);
  const bench = await makeBenchDisk('vm1', {
    sizeBytes: 512 * KIB,
    random,
    filledFraction: 1,
    targetDelayMs: () => (random() < 0.5 ? 0 : random() * 2),
  });
  // A guest rewriting a region all the time: dbt cannot converge and hands over to the mirror.
  const writer = startWriter(bench.disk.switch, bench.model, 4);
  const migration = startMigration([bench], {
    method: 'dbt',
    speedBytesPerSecond: 1024 * KIB,
    tuning: { downtimeTargetMs: 1, passMax: 2, mirrorMode: 'async', asyncBufferBytes: 256 * KIB },
  });
  const result = await migration.run();
  await writer.stop();
  await checkMoved(bench);
  assert.equal(result.method, 'mirror');
  const stats = migration.mirrorStats;
  assert.ok(stats !== undefined && stats.asyncWrites > 0, 'writes were queued after the hand-over');
  assert.equal(stats.heldBytes, 0);
});
