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
import { Delay } from '../../src/block/delay.js';
import type { BlockDevice } from '../../src/block/device.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Switch } from '../../src/block/switch.js';
import type { MethodName, MethodTuning, Scratch } from '../../src/migrate/method.js';
import {
  Migration,
  type MigrationDisk,
  type MigrationEvent,
  type MigrationResult,
} from '../../src/migrate/migration.js';

/** A deterministic PRNG (mulberry32), so a failing fast-check seed replays exactly. */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

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
  const source = new Delay(sourceMemory, delay);
  const targetBase = new Delay(targetMemory, delay);
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

export function randomBytes(length: number, random: () => number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 1) out[i] = Math.floor(random() * 256);
  return out;
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
): Promise<{ result: MigrationResult; guests: Guest[]; events: MigrationEvent[] }> {
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
  return { result, guests, events };
}
