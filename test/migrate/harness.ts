/**
 * The migration test bench shared by every method's tests: a guest that writes, zeroes, trims,
 * flushes and reads through the disk's Switch while a `Migration` runs, and a reference model
 * (one Buffer) of what the guest was acknowledged. After the switchover the destination must
 * equal the model byte for byte, read directly and through the Switch.
 *
 * Races are real: every device below is wrapped in a `Delay` with random sub-millisecond delays,
 * so guest writes, copy reads and copy writes overlap and finish out of order. Guest workers own
 * disjoint stripes of the disk (two overlapping writes in flight at once have no defined result
 * in NBD either), but each stripe spans several chunks and granules, so every write races the
 * copier.
 */
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Delay } from '../../src/block/delay.js';
import type { BlockDevice } from '../../src/block/device.js';
import { BlockErrorCode } from '../../src/block/errors.js';
import { FaultInjector } from '../../src/block/fault.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Switch } from '../../src/block/switch.js';
import type { MethodName, MethodTuning, MirrorStats, Scratch } from '../../src/migrate/method.js';
import {
  Migration,
  type MigrationDisk,
  type MigrationEvent,
  type MigrationResult,
} from '../../src/migrate/migration.js';
import { prng, randomBytes } from '../block/random.js';

export { prng, randomBytes };

export interface BenchDisk {
  readonly disk: MigrationDisk;
  readonly sourceMemory: MemoryDevice;
  readonly targetMemory: MemoryDevice;
  readonly model: Buffer;
  readonly scratches: MemoryDevice[];
}

export interface BenchOptions {
  readonly sizeBytes: number;
  readonly random: () => number;
  /** Largest random delay on each device, ms; 0 still yields a turn (setImmediate). */
  readonly delayMaxMs?: number;
  /** Initial contents: a fraction of 64 KiB pages filled with random data. */
  readonly filledFraction?: number;
  /** Wraps the target (e.g. a FaultInjector). */
  readonly wrapTarget?: (device: BlockDevice) => BlockDevice;
  /** Wraps the source (below the Switch and the method's filter). */
  readonly wrapSource?: (device: BlockDevice) => BlockDevice;
  /** The target's delay per request, ms, instead of the random one (a slow destination). */
  readonly targetDelayMs?: () => number;
}

/** What every method's property test draws: a seed, a disk size, the copier's chunk and window. */
export interface BenchShape {
  readonly seed: number;
  readonly sizeBytes: number;
  readonly chunkBytes: number;
  readonly inFlightMax: number;
}

/** Disk sizes from `sizesBytes` (default 256 KiB, and 1 MiB + 4 KiB: not a whole chunk). */
export function benchShapeArb(
  sizesBytes: readonly number[] = [256 * 1024, 1024 * 1024 + 4096],
): fc.Arbitrary<BenchShape> {
  return fc.record({
    seed: fc.integer({ min: 1, max: 2 ** 31 - 1 }),
    sizeBytes: fc.constantFrom(...sizesBytes),
    chunkBytes: fc.constantFrom(16 * 1024, 64 * 1024),
    inFlightMax: fc.integer({ min: 1, max: 8 }),
  });
}

/** A disk with random initial data, its Switch, an empty target, and the model. */
export async function makeBenchDisk(name: string, options: BenchOptions): Promise<BenchDisk> {
  const { sizeBytes, random } = options;
  const delayMaxMs = options.delayMaxMs ?? 0.3;
  const delay = (): number => (random() < 0.5 ? 0 : random() * delayMaxMs);
  const sourceMemory = new MemoryDevice(sizeBytes);
  const model = Buffer.alloc(sizeBytes);
  const page = 64 * 1024;
  for (let at = 0; at < sizeBytes; at += page) {
    if (random() >= (options.filledFraction ?? 0.5)) continue;
    const data = randomBytes(Math.min(page, sizeBytes - at), random);
    await sourceMemory.write(at, data);
    data.copy(model, at);
  }
  const targetMemory = new MemoryDevice(sizeBytes);
  const sourceBase = new Delay(sourceMemory, delay);
  const source = options.wrapSource ? options.wrapSource(sourceBase) : sourceBase;
  const targetBase = new Delay(targetMemory, options.targetDelayMs ?? delay);
  const target = options.wrapTarget ? options.wrapTarget(targetBase) : targetBase;
  const scratches: MemoryDevice[] = [];
  const disk: MigrationDisk = {
    name,
    switch: new Switch(source),
    source,
    target,
    targetTop: targetBase,
    createScratch: async (): Promise<Scratch> => {
      const memory = new MemoryDevice(sizeBytes);
      scratches.push(memory);
      return { device: new Delay(memory, delay), remove: async () => memory.close() };
    },
  };
  return { disk, sourceMemory, targetMemory, model, scratches };
}

/**
 * A guest: `workers` loops, each issuing random writes, zeroes, trims, flushes and checked reads
 * inside its own stripe of the disk, through the Switch, until `stop()`; the model records each
 * mutation once it is acknowledged. Reads are compared to the model (read-your-writes through the
 * migration), and a mismatch fails the run.
 */
export class Guest {
  readonly ops = { write: 0, zero: 0, trim: 0, flush: 0, read: 0 };
  private isStopped = false;
  private readonly loops: Promise<void>[] = [];

  constructor(
    private readonly bench: BenchDisk,
    private readonly random: () => number,
    workers = 4,
    private readonly opMaxBytes = 96 * 1024,
  ) {
    const stripe = Math.floor(bench.model.length / workers);
    for (let i = 0; i < workers; i += 1) this.loops.push(this.loop(i * stripe, stripe));
  }

  async stop(): Promise<void> {
    this.isStopped = true;
    await Promise.all(this.loops);
  }

  private async loop(start: number, length: number): Promise<void> {
    const device = this.bench.disk.switch;
    const model = this.bench.model;
    while (!this.isStopped) {
      const kind = this.random();
      const offset = start + Math.floor(this.random() * (length - 1));
      const size =
        1 + Math.floor(this.random() * Math.min(this.opMaxBytes, start + length - offset));
      if (kind < 0.55) {
        const data = randomBytes(size, this.random);
        await device.write(offset, data, { fua: this.random() < 0.1 });
        data.copy(model, offset);
        this.ops.write += 1;
      } else if (kind < 0.65) {
        await device.writeZeroes(offset, size, { mayTrim: this.random() < 0.5 });
        model.fill(0, offset, offset + size);
        this.ops.zero += 1;
      } else if (kind < 0.72) {
        // Our backends read a trimmed range as zeros; the model says so.
        await device.trim(offset, size);
        model.fill(0, offset, offset + size);
        this.ops.trim += 1;
      } else if (kind < 0.77) {
        await device.flush();
        this.ops.flush += 1;
      } else {
        const data = await device.read(offset, size);
        assert.ok(
          data.equals(model.subarray(offset, offset + size)),
          `guest read at ${offset}+${size} does not match what it wrote`,
        );
        this.ops.read += 1;
      }
    }
  }
}

export interface RunOptions {
  readonly method: MethodName;
  readonly chunkBytes?: number;
  readonly inFlightMax?: number;
  readonly tuning?: Partial<MethodTuning>;
  readonly speedBytesPerSecond?: number;
  readonly commit?: () => Promise<void>;
  readonly onEvent?: (event: MigrationEvent) => void;
  /** Called with the migration before it runs (to cancel it, change its speed). */
  readonly onStart?: (migration: Migration) => void;
}

export function startMigration(benches: readonly BenchDisk[], options: RunOptions): Migration {
  return new Migration(
    benches.map((bench) => bench.disk),
    {
      method: options.method,
      chunkBytes: options.chunkBytes ?? 64 * 1024,
      inFlightMax: options.inFlightMax ?? 4,
      tuning: { granularityBytes: 16 * 1024, ...options.tuning },
      speedBytesPerSecond: options.speedBytesPerSecond ?? 0,
      commit: options.commit ?? (async () => {}),
      ...(options.onEvent ? { onEvent: options.onEvent } : {}),
    },
  );
}

/** Asserts the target and the guest's view (now the target) equal the model. */
export async function checkMoved(bench: BenchDisk): Promise<void> {
  const onTarget = await bench.targetMemory.read(0, bench.model.length);
  assertSameBytes(onTarget, bench.model, 'destination');
  assert.equal(bench.disk.switch.isPaused, false, 'the guest is released');
  const seen = await bench.disk.switch.read(0, bench.model.length);
  assertSameBytes(seen, bench.model, 'guest view after switchover');
}

/** Asserts the source still holds everything the guest wrote (after a rollback). */
export async function checkOnSource(bench: BenchDisk): Promise<void> {
  const onSource = await bench.sourceMemory.read(0, bench.model.length);
  assertSameBytes(onSource, bench.model, 'source after rollback');
  const seen = await bench.disk.switch.read(0, bench.model.length);
  assertSameBytes(seen, bench.model, 'guest view after rollback');
}

export function assertSameBytes(actual: Buffer, expected: Buffer, what: string): void {
  if (actual.equals(expected)) return;
  let first = 0;
  while (first < actual.length && actual[first] === expected[first]) first += 1;
  assert.fail(`${what} differs from the model first at byte ${first} (of ${expected.length})`);
}

/** Runs a migration with a guest writing throughout; returns the result and the guest's counts. */
export async function migrateUnderLoad(
  benches: readonly BenchDisk[],
  random: () => number,
  options: RunOptions,
): Promise<{
  result: MigrationResult;
  guests: Guest[];
  events: MigrationEvent[];
  mirrorStats: MirrorStats | undefined;
}> {
  const events: MigrationEvent[] = [];
  const guests = benches.map((bench) => new Guest(bench, random));
  const migration = startMigration(benches, {
    ...options,
    onEvent: (event) => {
      events.push(event);
      options.onEvent?.(event);
    },
  });
  options.onStart?.(migration);
  let result: MigrationResult;
  try {
    result = await migration.run();
  } finally {
    await Promise.all(guests.map((guest) => guest.stop()));
  }
  return { result, guests, events, mirrorStats: migration.mirrorStats };
}

const KIB = 1024;

/** The destination failures every method is tested against: a media error and a full disk. */
export const TARGET_FAULT_CODES = [BlockErrorCode.EIO, BlockErrorCode.ENOSPC] as const;

export interface TargetFailureCase {
  readonly code: BlockErrorCode;
  /** Default 11. */
  readonly seed?: number;
  /** Paces the copy; default unlimited. */
  readonly speedBytesPerSecond?: number;
  /** The destination fails once it took this many bytes; without it, only once `fault.arm()`. */
  readonly afterBytes?: number;
  readonly tuning?: Partial<MethodTuning>;
  /** Sees every event, with the destination's fault injector (to arm it at a chosen moment). */
  readonly onEvent?: (event: MigrationEvent, fault: FaultInjector) => void;
}

/**
 * A 2 MiB disk full of data whose destination fails with `code` while the guest writes: the job
 * must fail with `ERR_TARGET_FAILED` naming the code, and leave the guest on a source that holds
 * every write it was acknowledged (a guest write that failed would reject the guest's loop and
 * replace the job's error). Resolves with the job's events and the destination's fault injector.
 */
export async function expectTargetFailure(
  method: MethodName,
  options: TargetFailureCase,
): Promise<{ events: MigrationEvent[]; fault: FaultInjector }> {
  const random = prng(options.seed ?? 11);
  const { code, afterBytes } = options;
  let fault: FaultInjector | undefined;
  const bench = await makeBenchDisk('vm1', {
    sizeBytes: 2 * 1024 * KIB,
    random,
    filledFraction: 1,
    wrapTarget: (device) => {
      fault = new FaultInjector(device, afterBytes === undefined ? { code } : { code, afterBytes });
      return fault;
    },
  });
  const events: MigrationEvent[] = [];
  const running = migrateUnderLoad([bench], random, {
    method,
    ...(options.tuning === undefined ? {} : { tuning: options.tuning }),
    ...(options.speedBytesPerSecond === undefined
      ? {}
      : { speedBytesPerSecond: options.speedBytesPerSecond }),
    onEvent: (event) => {
      events.push(event);
      if (fault !== undefined) options.onEvent?.(event, fault);
    },
  });
  await assert.rejects(running, (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_TARGET_FAILED');
    assert.match(error.message, new RegExp(code));
    return true;
  });
  await checkOnSource(bench);
  assert.ok(fault !== undefined, 'the destination was wrapped');
  return { events, fault };
}

export interface CancelCase {
  readonly seed: number;
  readonly sizeBytes: number;
  /** Paces the copy so the cancel lands while it runs. */
  readonly speedBytesPerSecond: number;
  readonly tuning?: Partial<MethodTuning>;
  /** Sees every event with the migration, and cancels it when the case says. */
  readonly cancelOn: (event: MigrationEvent, migration: Migration) => void;
}

/** Cancels `delayMs` after the copy phase starts. */
export function cancelAfterCopyStarts(
  delayMs: number,
): (event: MigrationEvent, migration: Migration) => void {
  return (event, migration) => {
    if (event.type === 'phase' && event.phase === 'copy') {
      setTimeout(() => migration.cancel(), delayMs);
    }
  };
}

/**
 * A disk full of data, a guest writing, a cancel while the method works: the job must reject
 * with `ERR_CANCELLED` and roll back to a source that holds every write, the guest released.
 */
export async function expectCancelRollsBack(
  method: MethodName,
  options: CancelCase,
): Promise<void> {
  const random = prng(options.seed);
  const bench = await makeBenchDisk('vm1', {
    sizeBytes: options.sizeBytes,
    random,
    filledFraction: 1,
  });
  let migration: Migration | undefined;
  const running = migrateUnderLoad([bench], random, {
    method,
    speedBytesPerSecond: options.speedBytesPerSecond,
    ...(options.tuning === undefined ? {} : { tuning: options.tuning }),
    onStart: (started) => {
      migration = started;
    },
    onEvent: (event) => {
      if (migration !== undefined) options.cancelOn(event, migration);
    },
  });
  await assert.rejects(running, { code: 'ERR_CANCELLED' });
  await checkOnSource(bench);
  assert.equal(bench.disk.switch.isPaused, false);
}

/**
 * A thin source (a tenth of its 64 KiB pages data, one page allocated but zeros) migrated with
 * no guest: only the data pages are copied and allocated on the destination.
 */
export async function expectThinStaysThin(method: MethodName): Promise<void> {
  const page = 64 * KIB;
  const random = prng(7);
  const bench = await makeBenchDisk('vm1', {
    sizeBytes: 4 * 1024 * KIB,
    random,
    filledFraction: 0.1,
  });
  await bench.sourceMemory.write(0, Buffer.alloc(page)); // allocated, but zeros
  bench.model.fill(0, 0, page);
  const result = await startMigration([bench], { method }).run();
  await checkMoved(bench);
  let dataBytes = 0;
  for (let at = 0; at < bench.model.length; at += page) {
    if (bench.model.subarray(at, at + page).some((byte) => byte !== 0)) dataBytes += page;
  }
  assert.ok(dataBytes > 0, 'the source holds some data');
  assert.equal(result.bytesCopied, dataBytes);
  assert.equal(bench.targetMemory.allocatedBytes, dataBytes);
}

/**
 * A guest writing random 4 KiB-aligned blocks (4–64 KiB) through `device` until `stop()`, which
 * resolves with the number of writes; `model` holds what each acknowledged write put there. One
 * write in flight at a time: two overlapping writes in flight have no defined result.
 */
export function startWriter(
  device: BlockDevice,
  model: Buffer,
  seed: number,
  /** Called after each acknowledged write (and the model updated). */
  onWrite?: () => void,
): { stop: () => Promise<number> } {
  const random = prng(seed);
  let isStopped = false;
  let writes = 0;
  const loop = async (): Promise<void> => {
    while (!isStopped) {
      const length = 4096 * (1 + Math.floor(random() * 16));
      const offset = 4096 * Math.floor(random() * ((model.length - length) / 4096));
      const data = randomBytes(length, random);
      await device.write(offset, data);
      data.copy(model, offset);
      writes += 1;
      onWrite?.();
    }
  };
  const running = loop();
  return {
    stop: async () => {
      isStopped = true;
      await running;
      return writes;
    },
  };
}
