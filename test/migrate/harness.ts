/**
 * The migration test bench shared by every method's tests: a guest that writes, zeroes, trims,
 * flushes and reads through the disk's Switch while a `Migration` runs, and a reference model
 * (one Buffer) of what the guest was acknowledged. After the switchover the destination must
 * equal the model byte for byte, read directly and through the Switch.
 *
 * Races are real: every device below is wrapped in a `Delay` whose seeded delays are mostly a
 * few event-loop turns with a tail of milliseconds (`requestDelayMs`), so guest writes, copy reads
 * and copy writes overlap and finish out of order. Guest workers own disjoint stripes of the disk
 * (two overlapping writes in flight at once have no defined result in NBD either), but each stripe
 * spans several chunks and granules, so every write races the copier.
 *
 * A byte-for-byte match alone would pass an engine that is fast but wrong: one that copied while
 * nothing raced it, or that copied everything while the guest was held. So the bench also keeps a
 * timeline (`RaceReport`): when each guest mutation was issued and acknowledged, when each copy
 * write landed on the target, and the stun; `assertRaced` and `assertStunCopiedAtMost` judge it.
 * Copy writes are told from mirrored guest writes by the async context they run in: the guest's
 * requests run in `guestContext`, and whatever they cause below (a mirrored write, an sxm fill)
 * inherits it; the copier runs in the migration's own context.
 */
import assert from 'node:assert/strict';
import { AsyncLocalStorage } from 'node:async_hooks';
import { performance } from 'node:perf_hooks';
import fc from 'fast-check';
import { Delay } from '../../src/block/delay.js';
import type { BlockDevice, WriteOptions, ZeroOptions } from '../../src/block/device.js';
import { BlockErrorCode } from '../../src/block/errors.js';
import { FaultInjector } from '../../src/block/fault.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Switch } from '../../src/block/switch.js';
import type { MethodName, MethodTuning, MirrorStats, Scratch } from '../../src/migrate/method.js';
import {
  Migration,
  type MigrationDisk,
  type MigrationEvent,
  type MigrationResult,
} from '../../src/migrate/migration.js';
import { prng, propertyOptions, randomBytes } from '../block/random.js';

export { prng, propertyOptions, randomBytes };

export interface BenchDisk {
  readonly disk: MigrationDisk;
  readonly sourceMemory: MemoryDevice;
  readonly targetMemory: MemoryDevice;
  readonly model: Buffer;
  readonly scratches: MemoryDevice[];
  /** The guest's Switch, recording each hold. */
  readonly stun: WatchedSwitch;
  /** What the migration wrote to the target, and when. */
  readonly copyWatch: CopyWatch;
  /** The switchover waits for the guest to race the copy (`BenchOptions.waitsForRace`). */
  readonly waitsForRace?: boolean;
}

/** Set while the guest's requests run, and inherited by whatever they cause below. */
const guestContext = new AsyncLocalStorage<true>();

/** Runs `work` as the guest: the target writes it causes are mirrored writes, not copies. */
export function asGuest<T>(work: () => T): T {
  return guestContext.run(true, work);
}

function isGuest(): boolean {
  return guestContext.getStore() === true;
}

/** One hold of the guest's I/O, ms on `performance.now()`'s clock. */
export interface Hold {
  readonly pausedMs: number;
  /** When no guest request was in flight any more; undefined while draining. */
  drainedMs: number | undefined;
  resumedMs: number | undefined;
  /** Bytes the migration wrote to the target between the drain and the resume. */
  targetBytes: number;
}

/**
 * The guest's Switch, recording each hold (an interpose, a redo-log swap, the switchover). The
 * requests it held start inside `resume()`, on the migration's call stack: they are the guest's,
 * so they start in `guestContext`.
 */
export class WatchedSwitch extends Switch {
  readonly holds: Hold[] = [];
  /** Awaited before the next `pause()` holds anything (the guest runs meanwhile); then cleared. */
  beforeNextPause: (() => Promise<void>) | undefined;

  /** The hold whose drain is done and which is not resumed yet. */
  get drainedHold(): Hold | undefined {
    const hold = this.holds.at(-1);
    return hold?.drainedMs !== undefined && hold.resumedMs === undefined ? hold : undefined;
  }

  override async pause(): Promise<void> {
    const before = this.beforeNextPause;
    this.beforeNextPause = undefined;
    await before?.();
    const hold: Hold = {
      pausedMs: performance.now(),
      drainedMs: undefined,
      resumedMs: undefined,
      targetBytes: 0,
    };
    this.holds.push(hold);
    await super.pause();
    hold.drainedMs = performance.now();
  }

  override resume(): void {
    const hold = this.holds.at(-1);
    if (hold !== undefined) hold.resumedMs = performance.now();
    asGuest(() => super.resume());
  }
}

/** The granularity of `CopyWatch.copiedAtMs`: a guest write's overlap is judged per block. */
const WATCH_BLOCK_BYTES = 4096;
/** The longest the stun waits for the guest to race the copy (`BenchOptions.waitsForRace`). */
const RACE_WAIT_MS_MAX = 200;

/**
 * Observes the target below the migration: when each block was first written by the copy (a
 * target write outside `guestContext`: the copier, a final copy, a snapshot's log copy), and what
 * the migration wrote while the guest was held and drained.
 */
export class CopyWatch extends PassThrough {
  /** Issue time of the first copy write; undefined until the copy starts. */
  copyStartMs: number | undefined;
  copyBytes = 0;
  /** Per 4 KiB block, when a copy write covering it whole first landed (Infinity: never). */
  readonly copiedAtMs: Float64Array;
  /** A guest mutation was issued on a block after the copy landed there. */
  isRaced = false;
  private readonly stun: () => WatchedSwitch;
  private onRaced: Array<() => void> = [];

  constructor(next: BlockDevice, stun: () => WatchedSwitch) {
    super(next);
    this.stun = stun;
    this.copiedAtMs = new Float64Array(Math.ceil(next.size / WATCH_BLOCK_BYTES)).fill(Infinity);
  }

  /** The guest was acknowledged a mutation it issued at `startMs` (whichever device it went to). */
  noteGuestMutation(offset: number, length: number, startMs: number): void {
    if (this.isRaced || !this.isCopiedBefore(offset, length, startMs)) return;
    this.isRaced = true;
    for (const wake of this.onRaced.splice(0)) wake();
  }

  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.watch(offset, data.length, () => this.next.write(offset, data, options));
  }

  override writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.watch(offset, length, () => this.next.writeZeroes(offset, length, options));
  }

  override trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.watch(offset, length, () => this.next.trim(offset, length, options));
  }

  /**
   * The offset of a block in `[start, start + length)` the copy has landed on, drawn with
   * `random`; undefined if there is none yet.
   */
  copiedOffsetIn(start: number, length: number, random: () => number): number | undefined {
    const blocks: number[] = [];
    const last = Math.floor((start + length - 1) / WATCH_BLOCK_BYTES);
    for (let block = Math.ceil(start / WATCH_BLOCK_BYTES); block <= last; block += 1) {
      if ((this.copiedAtMs[block] ?? Infinity) < Infinity) blocks.push(block);
    }
    const block = blocks[Math.floor(random() * blocks.length)];
    return block === undefined ? undefined : block * WATCH_BLOCK_BYTES;
  }

  /** True when a copy write had landed on a block of the range before `beforeMs`. */
  isCopiedBefore(offset: number, length: number, beforeMs: number): boolean {
    const last = Math.floor((offset + length - 1) / WATCH_BLOCK_BYTES);
    for (let block = Math.floor(offset / WATCH_BLOCK_BYTES); block <= last; block += 1) {
      if ((this.copiedAtMs[block] ?? Infinity) < beforeMs) return true;
    }
    return false;
  }

  /**
   * Resolves once a guest mutation was acknowledged over a copied block, or after
   * `RACE_WAIT_MS_MAX` (then the run's `assertRaced` fails).
   */
  raced(): Promise<void> {
    if (this.isRaced) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, RACE_WAIT_MS_MAX);
      this.onRaced.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private async watch(offset: number, length: number, send: () => Promise<void>): Promise<void> {
    const hold = this.stun().drainedHold;
    // With the guest held and drained, everything that reaches the target is the migration's.
    if (hold !== undefined) hold.targetBytes += length;
    if (isGuest()) return send();
    this.copyStartMs ??= performance.now();
    await send();
    this.copyBytes += length;
    const copiedMs = performance.now();
    const last = Math.floor((offset + length) / WATCH_BLOCK_BYTES);
    for (let block = Math.ceil(offset / WATCH_BLOCK_BYTES); block < last; block += 1) {
      if (copiedMs < (this.copiedAtMs[block] ?? Infinity)) this.copiedAtMs[block] = copiedMs;
    }
  }
}

export interface BenchOptions {
  readonly sizeBytes: number;
  readonly random: () => number;
  /** Longest delay of a request on each device, ms (`requestDelayMs`); 0: one loop turn each. */
  readonly delayMaxMs?: number;
  /** Initial contents: a fraction of 64 KiB pages filled with random data. */
  readonly filledFraction?: number;
  /** Wraps the target (e.g. a FaultInjector). */
  readonly wrapTarget?: (device: BlockDevice) => BlockDevice;
  /** Wraps the source (below the Switch and the method's filter). */
  readonly wrapSource?: (device: BlockDevice) => BlockDevice;
  /** The target's delay per request, ms, instead of the random one (a slow destination). */
  readonly targetDelayMs?: () => number;
  /**
   * The switchover waits (before it holds the guest, at most `RACE_WAIT_MS_MAX`) until a guest
   * mutation was acknowledged over a block the copy had landed: on a small disk a fast copy may
   * finish before any guest request touches what it copied, and the run would prove nothing. For
   * runs that `assertRaced`; a correct method only mirrors (or tracks) a few ms longer.
   */
  readonly waitsForRace?: boolean;
}

/**
 * A seeded delay per request, as a disk or a link gives them: most (85 %) pass within a
 * millisecond (a few event-loop turns, Delay), one in ten takes 1–2 ms, and one in twenty is
 * slow, up to `maxMs`. So a copy read, a copy write and a guest write issued in one order often
 * land in another. `maxMs` 0: every request waits one turn.
 */
export function requestDelayMs(random: () => number, maxMs = 6): () => number {
  if (maxMs <= 0) return () => 0;
  return () => {
    const draw = random();
    if (draw < 0.85) return random() * Math.min(1, maxMs);
    if (draw < 0.95) return Math.min(maxMs, 1 + random());
    return Math.min(maxMs, 2 + random() * (maxMs - 2));
  };
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
  const delay = requestDelayMs(random, options.delayMaxMs);
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
  const stun = new WatchedSwitch(source);
  const copyWatch = new CopyWatch(targetBase, () => stun);
  const target = options.wrapTarget ? options.wrapTarget(copyWatch) : copyWatch;
  const scratches: MemoryDevice[] = [];
  const disk: MigrationDisk = {
    name,
    switch: stun,
    source,
    target,
    targetTop: targetBase,
    createScratch: async (): Promise<Scratch> => {
      const memory = new MemoryDevice(sizeBytes);
      scratches.push(memory);
      return { device: new Delay(memory, delay), remove: async () => memory.close() };
    },
  };
  return {
    disk,
    sourceMemory,
    targetMemory,
    model,
    scratches,
    stun,
    copyWatch,
    waitsForRace: options.waitsForRace ?? false,
  };
}

/** A guest write, zero or trim: its range, when it was issued and when acknowledged (ms). */
export interface GuestMutationRecord {
  readonly offset: number;
  readonly length: number;
  readonly startMs: number;
  readonly ackMs: number;
}

/**
 * A guest: `workers` loops, each issuing random writes, zeroes, trims, flushes and checked reads
 * inside its own stripe of the disk, through the Switch, until `stop()`; the model records each
 * mutation once it is acknowledged. Reads are compared to the model (read-your-writes through the
 * migration), and a mismatch fails the run.
 */
export class Guest {
  readonly ops = { write: 0, zero: 0, trim: 0, flush: 0, read: 0 };
  /** Every acknowledged write, zero and trim, in acknowledgement order. */
  readonly mutations: GuestMutationRecord[] = [];
  private isStopped = false;
  private readonly loops: Promise<void>[] = [];
  private ackWaiters: Array<() => void> = [];

  constructor(
    private readonly bench: BenchDisk,
    private readonly random: () => number,
    workers = 4,
    private readonly opMaxBytes = 96 * 1024,
  ) {
    const stripe = Math.floor(bench.model.length / workers);
    for (let i = 0; i < workers; i += 1) {
      this.loops.push(asGuest(() => this.loop(i * stripe, stripe)));
    }
  }

  async stop(): Promise<void> {
    this.isStopped = true;
    await Promise.all(this.loops);
  }

  /**
   * Resolves once `count` mutations issued after `sinceMs` were acknowledged; the guest keeps
   * running. Rejects if a worker failed.
   */
  async mutatedAfter(sinceMs: number, count: number): Promise<void> {
    const failed = Promise.all(this.loops);
    while (this.mutations.filter((mutation) => mutation.startMs > sinceMs).length < count) {
      assert.ok(!this.isStopped, 'the guest was stopped before it wrote after the switchover');
      await Promise.race([new Promise<void>((resolve) => this.ackWaiters.push(resolve)), failed]);
    }
  }

  private acknowledged(offset: number, length: number, startMs: number): void {
    this.mutations.push({ offset, length, startMs, ackMs: performance.now() });
    this.bench.copyWatch.noteGuestMutation(offset, length, startMs);
    for (const wake of this.ackWaiters.splice(0)) wake();
  }

  /**
   * Anywhere in the stripe, but one request in four inside a block the copy has already been
   * to (when it has): a write there is the case each method must handle (mirror it, copy it
   * again, log it), and on a small disk uniform offsets may miss the few blocks copied before
   * the stun. Such a request stays inside its block, so it seldom waits for a chunk in flight.
   */
  private pickRange(start: number, length: number): { offset: number; sizeMax: number } {
    const end = start + length;
    const copied =
      this.random() < 0.25
        ? this.bench.copyWatch.copiedOffsetIn(start, length - 1, this.random)
        : undefined;
    if (copied === undefined) {
      const offset = start + Math.floor(this.random() * (length - 1));
      return { offset, sizeMax: Math.min(this.opMaxBytes, end - offset) };
    }
    const blockEnd = Math.min(end, copied + WATCH_BLOCK_BYTES);
    const offset = Math.min(blockEnd - 1, copied + Math.floor(this.random() * WATCH_BLOCK_BYTES));
    return { offset, sizeMax: blockEnd - offset };
  }

  private async loop(start: number, length: number): Promise<void> {
    const device = this.bench.disk.switch;
    const model = this.bench.model;
    while (!this.isStopped) {
      const kind = this.random();
      const { offset, sizeMax } = this.pickRange(start, length);
      const size = 1 + Math.floor(this.random() * sizeMax);
      const startMs = performance.now();
      if (kind < 0.55) {
        const data = randomBytes(size, this.random);
        await device.write(offset, data, { fua: this.random() < 0.1 });
        data.copy(model, offset);
        this.ops.write += 1;
        this.acknowledged(offset, size, startMs);
      } else if (kind < 0.65) {
        await device.writeZeroes(offset, size, { mayTrim: this.random() < 0.5 });
        model.fill(0, offset, offset + size);
        this.ops.zero += 1;
        this.acknowledged(offset, size, startMs);
      } else if (kind < 0.72) {
        // Our backends read a trimmed range as zeros; the model says so.
        await device.trim(offset, size);
        model.fill(0, offset, offset + size);
        this.ops.trim += 1;
        this.acknowledged(offset, size, startMs);
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

/**
 * How the guest's mutations fell against the copy and the stun on one disk (ms on
 * `performance.now()`'s clock). A run that proves anything has mutations that raced the copy,
 * some of them on blocks already copied, and some after the switchover.
 */
export interface RaceReport {
  readonly disk: string;
  /** When the migration issued its first write to the target. */
  readonly copyStartMs: number | undefined;
  /** The switchover's hold: the last one. */
  readonly stun: Hold | undefined;
  /** Mutations issued after the copy started and acknowledged before the stun began. */
  readonly racedCount: number;
  /** Of those, the ones that overlapped a block the copy had landed before they were issued. */
  readonly racedOnCopiedCount: number;
  /** Mutations issued after the stun ended: they went to the destination alone. */
  readonly afterCount: number;
  /** Bytes the migration wrote to the target while the guest was held and drained in the stun. */
  readonly stunTargetBytes: number;
  /** Bytes it wrote to the target in the holds before the stun (interposes, redo-log swaps). */
  readonly earlierHoldTargetBytes: number;
  /** Bytes the copy wrote to the target in all. */
  readonly copyBytes: number;
  /** Mutations issued before the stun and acknowledged after it began (drained into it). */
  readonly drained: readonly GuestMutationRecord[];
  /** Every mutation the guest was acknowledged, for a method's own bound. */
  readonly mutations: readonly GuestMutationRecord[];
}

export function raceReportOf(bench: BenchDisk, guest: Guest): RaceReport {
  const { copyWatch } = bench;
  const stun = bench.stun.holds.at(-1);
  const copyStartMs = copyWatch.copyStartMs ?? Infinity;
  const stunMs = stun?.pausedMs ?? Infinity;
  let racedCount = 0;
  let racedOnCopiedCount = 0;
  let afterCount = 0;
  const drained: GuestMutationRecord[] = [];
  for (const mutation of guest.mutations) {
    if (mutation.startMs > copyStartMs && mutation.ackMs < stunMs) {
      racedCount += 1;
      const { offset, length, startMs } = mutation;
      if (copyWatch.isCopiedBefore(offset, length, startMs)) racedOnCopiedCount += 1;
    }
    if (stun?.resumedMs !== undefined && mutation.startMs > stun.resumedMs) afterCount += 1;
    if (mutation.startMs < stunMs && mutation.ackMs >= stunMs) drained.push(mutation);
  }
  return {
    disk: bench.disk.name,
    copyStartMs: copyWatch.copyStartMs,
    stun,
    racedCount,
    racedOnCopiedCount,
    afterCount,
    stunTargetBytes: stun?.targetBytes ?? 0,
    earlierHoldTargetBytes: bench.stun.holds
      .slice(0, -1)
      .reduce((sum, hold) => sum + hold.targetBytes, 0),
    copyBytes: copyWatch.copyBytes,
    drained,
    mutations: guest.mutations,
  };
}

/** Bytes of whole `granuleBytes` granules that the mutations touch (each counted once). */
export function granuleBytesOf(
  mutations: readonly GuestMutationRecord[],
  granuleBytes: number,
): number {
  const granules = new Set<number>();
  for (const { offset, length } of mutations) {
    const last = Math.floor((offset + length - 1) / granuleBytes);
    for (let granule = Math.floor(offset / granuleBytes); granule <= last; granule += 1) {
      granules.add(granule);
    }
  }
  return granules.size * granuleBytes;
}

function summaryOf(report: RaceReport): string {
  const { stun, copyStartMs } = report;
  const at = (ms: number | undefined): string => (ms === undefined ? '-' : ms.toFixed(1));
  return (
    `${report.disk}: copy from ${at(copyStartMs)} ms, stun ${at(stun?.pausedMs)}–${at(stun?.resumedMs)} ms; ` +
    `${report.racedCount} mutations raced the copy, ${report.racedOnCopiedCount} on copied blocks, ` +
    `${report.afterCount} after the switchover; ${report.copyBytes} bytes copied, ` +
    `${report.stunTargetBytes} in the stun`
  );
}

/**
 * The run raced: guest mutations were acknowledged between the copy's start and the stun, at
 * least one of them on blocks the copy had already landed (a mirror must carry it, dbt must copy
 * it again, a snapshot must consolidate it), and the guest wrote after the switchover too. And
 * the copy ran with the guest running: no hold before the stun wrote to the target (an interpose
 * or a redo-log swap holds the guest only to re-point).
 */
export function assertRaced(report: RaceReport, seed: number): void {
  const why = `${summaryOf(report)} (seed ${seed})`;
  assert.ok(report.copyStartMs !== undefined, `the copy wrote the target: ${why}`);
  assert.ok(report.racedCount > 0, `guest writes landed during the copy: ${why}`);
  assert.ok(report.racedOnCopiedCount > 0, `guest writes landed on copied blocks: ${why}`);
  assert.ok(report.afterCount > 0, `the guest wrote after the switchover: ${why}`);
  assert.equal(
    report.earlierHoldTargetBytes,
    0,
    `no copy while the guest was held before the stun: ${why}`,
  );
}

/**
 * The stun wrote at most `maxBytes` to the target: the method's final copy is bounded by what it
 * promises (`bound` says what), so the downtime is not where the copy happened.
 */
export function assertStunCopiedAtMost(
  report: RaceReport,
  maxBytes: number,
  bound: string,
  seed: number,
): void {
  assert.ok(
    report.stunTargetBytes <= maxBytes,
    `the stun wrote ${report.stunTargetBytes} bytes to the target, more than ${maxBytes} ` +
      `(${bound}): ${summaryOf(report)} (seed ${seed})`,
  );
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
  races: RaceReport[];
  /** What the method still had to copy, over every disk, just before the stun. */
  dirtyAtStunBytes: number;
}> {
  const events: MigrationEvent[] = [];
  const guests = benches.map((bench) => new Guest(bench, random));
  let dirtyAtStunBytes = 0;
  const migration: Migration = startMigration(benches, {
    ...options,
    onEvent: (event) => {
      events.push(event);
      // Just before the switchover pauses each Switch: wait for the race if asked, then take
      // what is still dirty as the stun begins.
      if (event.type === 'phase' && event.phase === 'switchover') {
        for (const bench of benches) {
          bench.stun.beforeNextPause = async () => {
            if (bench.waitsForRace) await bench.copyWatch.raced();
            dirtyAtStunBytes = Math.max(dirtyAtStunBytes, migration.dirtyBytes);
          };
        }
      }
      options.onEvent?.(event);
    },
  });
  options.onStart?.(migration);
  let result: MigrationResult;
  try {
    result = await migration.run();
    // Writes after the switchover go to the destination alone; the model check covers them.
    await Promise.all(
      guests.map((guest, index) =>
        guest.mutatedAfter(benches[index]?.stun.holds.at(-1)?.resumedMs ?? 0, 4),
      ),
    );
  } finally {
    await Promise.all(guests.map((guest) => guest.stop()));
  }
  const races = benches.map((bench, index) =>
    raceReportOf(bench, guests[index] ?? assert.fail('one guest per disk')),
  );
  return { result, guests, events, mirrorStats: migration.mirrorStats, races, dirtyAtStunBytes };
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
  const running = asGuest(loop);
  return {
    stop: async () => {
      isStopped = true;
      await running;
      return writes;
    },
  };
}
