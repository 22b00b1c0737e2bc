import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import type { MethodTuning } from '../../../src/migrate/method.js';
import type { Migration, MigrationEvent } from '../../../src/migrate/migration.js';
import {
  assertRaced,
  assertStunCopiedAtMost,
  type BenchDisk,
  benchShapeArb,
  checkMoved,
  expectCancelRollsBack,
  expectTargetFailure,
  granuleBytesOf,
  makeBenchDisk,
  migrateUnderLoad,
  prng,
  propertyOptions,
  type RaceReport,
  randomBytes,
  startMigration,
  TARGET_FAULT_CODES,
} from '../harness.js';

const KiB = 1024;

test('dbt: after switchover the destination equals the model, whatever the guest did', async () => {
  await fc.assert(
    fc.asyncProperty(
      // A storm of writes dirties most of the disk in each pass: small disks keep passes short.
      benchShapeArb([256 * KiB, 512 * KiB + 4096]),
      fc.record({
        downtimeTargetMs: fc.constantFrom(0, 2, 100),
        passMax: fc.integer({ min: 1, max: 3 }),
        isHotBlockAvoidance: fc.boolean(),
      }),
      fc.integer({ min: 1, max: 2 }),
      async ({ seed, sizeBytes, chunkBytes, inFlightMax }, tuning, diskCount) => {
        const random = prng(seed);
        const benches: BenchDisk[] = [];
        for (let i = 0; i < diskCount; i += 1)
          benches.push(await makeBenchDisk(`disk${i}`, { sizeBytes, random, waitsForRace: true }));
        let lastForkMs = 0;
        const { result, events, races, dirtyAtStunBytes } = await migrateUnderLoad(
          benches,
          random,
          {
            method: 'dbt',
            chunkBytes,
            inFlightMax,
            tuning,
            onEvent: (event) => {
              // A pass forks the tracker's bitmap just before it says so; the first pass copies
              // the whole disk, and what is written from its start on is tracked.
              if (event.type === 'pass' || (event.type === 'phase' && event.phase === 'copy')) {
                lastForkMs = performance.now();
              }
            },
          },
        );
        for (const bench of benches) await checkMoved(bench);
        const handOver = events.find((event) => event.type === 'method');
        assert.equal(result.method, handOver === undefined ? 'dbt' : 'mirror');
        for (const race of races) assertRaced(race, seed);
        assertDbtStunBounded(races, {
          seed,
          dirtyAtStunBytes,
          lastForkMs,
          isHandedOver: handOver !== undefined,
          isSkippingHot: events.some((event) => event.type === 'message'),
        });
      },
    ),
    propertyOptions(30),
  );
});

const GRANULE_BYTES = 16 * KiB;

/**
 * What dbt's final copy may write, with the guest held: the dirty set it judged small enough when
 * it stopped passing, and what the guest wrote after that (drained into the stun included). A
 * single disk that ended as dbt without hot blocks is bounded on the harness's own count: the
 * granules of mutations acknowledged after the last pass forked (a write acknowledged before
 * settled into the bitmap that pass copied). A job handed over to the mirror copies nothing.
 */
function assertDbtStunBounded(
  races: readonly RaceReport[],
  run: {
    seed: number;
    dirtyAtStunBytes: number;
    lastForkMs: number;
    isHandedOver: boolean;
    isSkippingHot: boolean;
  },
): void {
  const { seed } = run;
  const [only] = races;
  if (races.length === 1 && only !== undefined) {
    if (run.isHandedOver) {
      assertStunCopiedAtMost(only, 0, 'handed over to a synchronous mirror', seed);
      return;
    }
    if (!run.isSkippingHot) {
      const sinceFork = only.mutations.filter((mutation) => mutation.ackMs > run.lastForkMs);
      const bound = granuleBytesOf(sinceFork, GRANULE_BYTES);
      assertStunCopiedAtMost(only, bound, 'the granules written since the last pass forked', seed);
      return;
    }
  }
  let drainedBytes = 0;
  for (const race of races) drainedBytes += granuleBytesOf(race.drained, GRANULE_BYTES);
  const stunBytes = races.reduce((sum, race) => sum + race.stunTargetBytes, 0);
  assert.ok(
    stunBytes <= run.dirtyAtStunBytes + drainedBytes,
    `the stun wrote ${stunBytes} bytes, more than the ${run.dirtyAtStunBytes} dirty at the stun ` +
      `and the ${drainedBytes} drained into it (seed ${seed})`,
  );
}

/**
 * A guest that writes in step with the passes, so that hot blocks are sure to occur: at the start
 * of each of its first `burstCount` passes it rewrites the same `hotCount` granules and writes
 * `coldCount` granules it has not written before (writes, zeroes and trims inside each granule,
 * one request at a time). Those requests settle after the pass forked, so the hot granules are
 * written during consecutive passes; then the guest stops and the job can converge.
 */
class PassGuest {
  private readonly granules: number[];
  private burst: Promise<void> = Promise.resolve();

  constructor(
    private readonly bench: BenchDisk,
    private readonly random: () => number,
    private readonly hotCount: number,
    private readonly coldCount: number,
    private readonly burstCount: number,
  ) {
    // Hot granules first, then the cold ones in the order they are first written.
    this.granules = Array.from({ length: bench.model.length / GRANULE_BYTES }, (_v, i) => i);
    for (let i = this.granules.length - 1; i > 0; i -= 1) {
      const j = Math.floor(random() * (i + 1));
      [this.granules[i], this.granules[j]] = [this.granules[j] ?? 0, this.granules[i] ?? 0];
    }
  }

  onPass(pass: number): void {
    if (pass > this.burstCount) return;
    const cold = this.granules.slice(
      this.hotCount + (pass - 1) * this.coldCount,
      this.hotCount + pass * this.coldCount,
    );
    const targets = [...this.granules.slice(0, this.hotCount), ...cold];
    this.burst = this.burst.then(async () => {
      for (const granule of targets) await this.mutate(granule);
    });
  }

  async settled(): Promise<void> {
    await this.burst;
  }

  private async mutate(granule: number): Promise<void> {
    const device = this.bench.disk.switch;
    const model = this.bench.model;
    const offset = granule * GRANULE_BYTES + Math.floor(this.random() * (GRANULE_BYTES - 1));
    const size = 1 + Math.floor(this.random() * ((granule + 1) * GRANULE_BYTES - offset - 1));
    const kind = this.random();
    if (kind < 0.8) {
      const data = randomBytes(size, this.random);
      await device.write(offset, data);
      data.copy(model, offset);
    } else {
      await (kind < 0.9 ? device.writeZeroes(offset, size) : device.trim(offset, size));
      model.fill(0, offset, offset + size);
    }
  }
}

test('dbt: hot blocks skipped during the passes reach the destination in the final copy', async () => {
  let skippingRuns = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.integer({ min: 1, max: 2 ** 31 - 1 }),
      fc.integer({ min: 1, max: 2 }),
      fc.integer({ min: 4, max: 8 }),
      fc.integer({ min: 2, max: 4 }),
      fc.integer({ min: 4, max: 7 }),
      fc.boolean(),
      async (seed, hotCount, coldCount, burstCount, passMax, isHotBlockAvoidance) => {
        const random = prng(seed);
        const bench = await makeBenchDisk('vm1', {
          sizeBytes: 1024 * KiB,
          random,
          filledFraction: 1,
        });
        const guest = new PassGuest(bench, random, hotCount, coldCount, burstCount);
        const events: MigrationEvent[] = [];
        // The hot granules fit the target at the measured rate, hot and cold together do not.
        const migration = startMigration([bench], {
          method: 'dbt',
          speedBytesPerSecond: 4096 * KiB,
          tuning: { downtimeTargetMs: 10, passMax, isHotBlockAvoidance },
          onEvent: (event) => {
            events.push(event);
            if (event.type === 'pass') guest.onPass(event.pass);
          },
        });
        const result = await migration.run();
        await guest.settled();
        await checkMoved(bench);
        const isSkipping = events.some((event) => event.type === 'message');
        assert.ok(isHotBlockAvoidance || !isSkipping, 'nothing is skipped without avoidance');
        if (isSkipping && result.method === 'dbt') skippingRuns += 1;
      },
    ),
    propertyOptions(30),
  );
  assert.ok(skippingRuns > 0, 'some runs skipped hot blocks and still converged as dbt');
});

/**
 * A guest that keeps rewriting a small region, one worker per stripe (disjoint, so the model is
 * defined), with a short random pause now and then, as a database rewriting its log does.
 */
class HotGuest {
  writes = 0;
  private isStopped = false;
  private readonly loops: Promise<void>[] = [];

  constructor(
    private readonly bench: BenchDisk,
    private readonly random: () => number,
    offset: number,
    length: number,
    workers: number,
  ) {
    const stripe = length / workers;
    for (let i = 0; i < workers; i += 1) this.loops.push(this.loop(offset + i * stripe, stripe));
  }

  async stop(): Promise<void> {
    this.isStopped = true;
    await Promise.all(this.loops);
  }

  private async loop(start: number, length: number): Promise<void> {
    while (!this.isStopped) {
      const offset = start + Math.floor(this.random() * length);
      const size = 1 + Math.floor(this.random() * (start + length - offset));
      const data = randomBytes(size, this.random);
      await this.bench.disk.switch.write(offset, data);
      data.copy(this.bench.model, offset);
      this.writes += 1;
      if (this.random() < 0.3) await sleep(1);
    }
  }
}

interface HotRun {
  readonly method: string;
  /** Passes dbt made before it handed over to the mirror (all of them if it did not). */
  readonly dbtPasses: number;
  /** Bytes the copier wrote before the hand-over. */
  readonly dbtBytes: number;
  readonly events: MigrationEvent[];
}

const HOT_RUN_LIMIT_MS = 15_000;

/** 512 KiB, a 64 KiB region rewritten all the time, a copy at 1 MiB/s, a 1 ms target. */
async function migrateHot(seed: number, tuning: Partial<MethodTuning>): Promise<HotRun> {
  const random = prng(seed);
  const bench = await makeBenchDisk('vm1', { sizeBytes: 512 * KiB, random, filledFraction: 1 });
  const guest = new HotGuest(bench, random, 128 * KiB, 64 * KiB, 4);
  const events: MigrationEvent[] = [];
  let dbtBytes: number | undefined;
  let dbtPasses = 0;
  const migration: Migration = startMigration([bench], {
    method: 'dbt',
    speedBytesPerSecond: 1024 * KiB,
    tuning: { downtimeTargetMs: 1, ...tuning },
    onEvent: (event) => {
      events.push(event);
      if (event.type === 'pass' && dbtBytes === undefined) dbtPasses = event.pass;
      if (event.type === 'method') dbtBytes = migration.bytesCopied;
    },
  });
  // A mirror that cannot catch up with the guest would run forever: fail instead of hanging.
  const watchdog = setTimeout(() => migration.cancel(), HOT_RUN_LIMIT_MS);
  try {
    const result = await migration.run().catch((error: unknown) => {
      const state = `${migration.method}, ${migration.passes} passes, ${migration.dirtyBytes} dirty`;
      assert.fail(`not done within ${HOT_RUN_LIMIT_MS} ms (${state}): ${String(error)}`);
    });
    await guest.stop();
    await checkMoved(bench);
    assert.ok(guest.writes > 100, `the guest rewrote its region (${guest.writes} writes)`);
    return {
      method: result.method,
      dbtPasses,
      dbtBytes: dbtBytes ?? result.bytesCopied,
      events,
    };
  } finally {
    clearTimeout(watchdog);
    await guest.stop();
  }
}

test('dbt: a guest rewriting a region faster than a pass copies it makes the job continue as mirror', async () => {
  for (const isHotBlockAvoidance of [false, true]) {
    const run = await migrateHot(3, { passMax: 3, isHotBlockAvoidance });
    assert.equal(run.method, 'mirror');
    const handOver = run.events.find((event) => event.type === 'method');
    assert.ok(handOver?.type === 'method' && /did not converge/.test(handOver.reason));
    assert.ok(run.events.some((event) => event.type === 'mode' && event.mode === 'sync'));
    // Without avoidance it spends its passes; with it, the hot blocks alone end it sooner.
    if (isHotBlockAvoidance) assert.ok(run.dbtPasses <= 3);
    else assert.equal(run.dbtPasses, 3);
  }
});

test('dbt: hot-block avoidance copies less before the hand-over than copying every pass', async () => {
  const on = await migrateHot(4, { passMax: 5, isHotBlockAvoidance: true });
  const off = await migrateHot(4, { passMax: 5, isHotBlockAvoidance: false });
  // Off: the whole disk, then the hot region in each of 4 more passes; on: the hot region once.
  assert.equal(off.dbtPasses, 5);
  assert.equal(on.dbtPasses, 2);
  assert.ok(
    on.dbtBytes + 128 * KiB <= off.dbtBytes,
    `with avoidance ${on.dbtBytes} bytes, without ${off.dbtBytes}`,
  );
});

test('dbt: cancel during the second pass rolls back to the source with every write', async () => {
  let isCancelledInPass2 = false;
  await expectCancelRollsBack('dbt', {
    seed: 5,
    sizeBytes: 2 * 1024 * KiB,
    speedBytesPerSecond: 4 * 1024 * KiB,
    tuning: { downtimeTargetMs: 0, passMax: 8 },
    cancelOn: (event, migration) => {
      if (event.type !== 'pass' || event.pass !== 2) return;
      setTimeout(() => {
        isCancelledInPass2 = migration.passes === 2 && migration.cancel();
      }, 5);
    },
  });
  assert.ok(isCancelledInPass2, 'cancelled while the second pass ran');
});

test('dbt: a destination failing with EIO or ENOSPC fails the job and leaves the guest on the source', async () => {
  const sizeBytes = 2 * 1024 * KiB;
  // In the first pass, and in a later one (the first pass writes the whole disk).
  for (const afterBytes of [512 * KiB, sizeBytes + 4 * KiB]) {
    for (const code of TARGET_FAULT_CODES) {
      await expectTargetFailure('dbt', { code, afterBytes, tuning: { downtimeTargetMs: 0 } });
    }
  }
});
