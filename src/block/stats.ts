import { performance } from 'node:perf_hooks';
import type { Extent, WriteOptions, ZeroOptions } from './device.js';
import { PassThrough } from './filter.js';

export const STATS_VERBS = [
  'read',
  'write',
  'writeZeroes',
  'trim',
  'flush',
  'cache',
  'extents',
] as const;
export type StatsVerb = (typeof STATS_VERBS)[number];

const Verb = {
  read: 0,
  write: 1,
  writeZeroes: 2,
  trim: 3,
  flush: 4,
  cache: 5,
  extents: 6,
} as const;
type VerbIndex = (typeof Verb)[keyof typeof Verb];
const VERB_COUNT = STATS_VERBS.length;

/**
 * Latency buckets, log2 in microseconds: bucket 0 holds [0, 1) µs, bucket i (1..24) holds
 * [2^(i-1), 2^i) µs, and the last bucket holds everything from 2^24 µs (about 17 s) up.
 */
export const LATENCY_BUCKET_COUNT = 26;
const LAST_BUCKET = LATENCY_BUCKET_COUNT - 1;

/** The exclusive upper bound of bucket `index` in µs (Infinity for the last bucket). */
export function latencyBucketUpperUs(index: number): number {
  return index >= LAST_BUCKET ? Number.POSITIVE_INFINITY : 2 ** index;
}

function bucketOf(latencyUs: number): number {
  // 32 - clz32(n) is the bit length of n: 0 for 0, 1 for 1, 2 for 2..3, ... (ToUint32 drops the
  // fraction, so 0.4 µs lands in bucket 0 and 3.9 µs in bucket 2 = [2, 4)).
  return latencyUs >= 2 ** (LAST_BUCKET - 1) ? LAST_BUCKET : 32 - Math.clz32(latencyUs);
}

export interface LatencySnapshot {
  /** Upper bound of the bucket holding the median, clamped to `maxUs` (0 when nothing completed). */
  readonly p50Us: number;
  /** Upper bound of the bucket holding the 99th percentile, clamped to `maxUs`. */
  readonly p99Us: number;
  /** The slowest request, measured exactly. */
  readonly maxUs: number;
  readonly meanUs: number;
  /** Counts per bucket, `LATENCY_BUCKET_COUNT` long (bounds: `latencyBucketUpperUs`). */
  readonly buckets: readonly number[];
}

export interface VerbStatsSnapshot {
  readonly operations: number;
  readonly bytes: number;
  readonly errors: number;
  readonly latency: LatencySnapshot;
}

export interface StatsSnapshot {
  /** Wall clock (Date.now()) when the snapshot was taken: rates come from two snapshots. */
  readonly timestampMs: number;
  /** Requests issued through this filter and not yet settled. */
  readonly inFlight: number;
  /** The most requests ever in flight at once. */
  readonly inFlightPeak: number;
  readonly verbs: { readonly [verb in StatsVerb]: VerbStatsSnapshot };
}

/**
 * Counts what passes through: per verb, requests, bytes and errors, and a latency histogram;
 * plus how many requests are in flight below. The dashboard's guest IOPS and latency charts and
 * Storage DRS's latency threshold read `snapshot()`.
 *
 * What each counter means, for every verb:
 * - `operations`: requests that completed successfully;
 * - `errors`: requests that failed (the error reaches the caller unchanged);
 * - `bytes`: the length each successful request named: the payload for read and write, the range
 *   for writeZeroes, trim, cache and extents (asked, not answered), 0 for flush;
 * - latency: successful requests only, from the call to the settling of `next`'s promise.
 *
 * Hot path: counters are typed arrays indexed by verb, allocated once; a request costs two clock
 * reads and a few array stores, and no allocation besides the promise the verb needs.
 */
export class Stats extends PassThrough {
  private readonly operations = new Float64Array(VERB_COUNT);
  private readonly bytes = new Float64Array(VERB_COUNT);
  private readonly errors = new Float64Array(VERB_COUNT);
  private readonly latencySumUs = new Float64Array(VERB_COUNT);
  private readonly latencyMaxUs = new Float64Array(VERB_COUNT);
  /** Row `verb * LATENCY_BUCKET_COUNT + bucket`. */
  private readonly histogram = new Float64Array(VERB_COUNT * LATENCY_BUCKET_COUNT);
  private inFlight = 0;
  private inFlightPeak = 0;

  // read and write, the guest's hot path, chain one `then` instead of an async function's await.
  override read(offset: number, length: number, target?: Buffer): Promise<Buffer> {
    const startMs = this.begin();
    let pending: Promise<Buffer>;
    try {
      pending = this.next.read(offset, length, target);
    } catch (error) {
      return this.failed(Verb.read, error);
    }
    return pending.then(
      (data) => {
        this.succeed(Verb.read, startMs, length);
        return data;
      },
      (error: unknown) => this.failed(Verb.read, error),
    );
  }

  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    const startMs = this.begin();
    let pending: Promise<void>;
    try {
      pending = this.next.write(offset, data, options);
    } catch (error) {
      return this.failed(Verb.write, error);
    }
    return pending.then(
      () => this.succeed(Verb.write, startMs, data.length),
      (error: unknown) => this.failed(Verb.write, error),
    );
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    const startMs = this.begin();
    try {
      await this.next.writeZeroes(offset, length, options);
      this.succeed(Verb.writeZeroes, startMs, length);
    } catch (error) {
      this.fail(Verb.writeZeroes);
      throw error;
    }
  }

  override async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    const startMs = this.begin();
    try {
      await this.next.trim(offset, length, options);
      this.succeed(Verb.trim, startMs, length);
    } catch (error) {
      this.fail(Verb.trim);
      throw error;
    }
  }

  override async flush(): Promise<void> {
    const startMs = this.begin();
    try {
      await this.next.flush();
      this.succeed(Verb.flush, startMs, 0);
    } catch (error) {
      this.fail(Verb.flush);
      throw error;
    }
  }

  override async cache(offset: number, length: number): Promise<void> {
    const startMs = this.begin();
    try {
      await this.next.cache(offset, length);
      this.succeed(Verb.cache, startMs, length);
    } catch (error) {
      this.fail(Verb.cache);
      throw error;
    }
  }

  override async extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    const startMs = this.begin();
    try {
      const runs = await this.next.extents(offset, length, runsMax);
      this.succeed(Verb.extents, startMs, length);
      return runs;
    } catch (error) {
      this.fail(Verb.extents);
      throw error;
    }
  }

  /** A plain object (JSON-able, detached from the live counters). Costs O(verbs × buckets). */
  snapshot(): StatsSnapshot {
    const verbs = {} as Record<StatsVerb, VerbStatsSnapshot>;
    for (const name of STATS_VERBS) {
      const verb = Verb[name];
      verbs[name] = {
        operations: this.operations[verb]!,
        bytes: this.bytes[verb]!,
        errors: this.errors[verb]!,
        latency: this.latencyOf(verb),
      };
    }
    return {
      timestampMs: Date.now(),
      inFlight: this.inFlight,
      inFlightPeak: this.inFlightPeak,
      verbs,
    };
  }

  private begin(): number {
    this.inFlight += 1;
    if (this.inFlight > this.inFlightPeak) this.inFlightPeak = this.inFlight;
    return performance.now();
  }

  private succeed(verb: VerbIndex, startMs: number, bytes: number): void {
    const latencyUs = (performance.now() - startMs) * 1000;
    this.inFlight -= 1;
    this.operations[verb]! += 1;
    this.bytes[verb]! += bytes;
    this.latencySumUs[verb]! += latencyUs;
    if (latencyUs > this.latencyMaxUs[verb]!) this.latencyMaxUs[verb] = latencyUs;
    this.histogram[verb * LATENCY_BUCKET_COUNT + bucketOf(latencyUs)]! += 1;
  }

  /** Counts the failure and passes the same error on, as a rejection. */
  private failed(verb: VerbIndex, error: unknown): Promise<never> {
    this.fail(verb);
    return Promise.reject(error);
  }

  private fail(verb: VerbIndex): void {
    this.inFlight -= 1;
    this.errors[verb]! += 1;
  }

  private latencyOf(verb: VerbIndex): LatencySnapshot {
    const row = verb * LATENCY_BUCKET_COUNT;
    const buckets = Array.from(this.histogram.subarray(row, row + LATENCY_BUCKET_COUNT));
    const count = this.operations[verb]!;
    const maxUs = this.latencyMaxUs[verb]!;
    return {
      p50Us: percentileUs(buckets, count, 0.5, maxUs),
      p99Us: percentileUs(buckets, count, 0.99, maxUs),
      maxUs,
      meanUs: count === 0 ? 0 : this.latencySumUs[verb]! / count,
      buckets,
    };
  }
}

/**
 * The upper bound of the bucket holding the sample of rank ceil(quantile × count): an upper
 * estimate, at most twice the true value, never above the measured maximum.
 */
function percentileUs(
  buckets: readonly number[],
  count: number,
  quantile: number,
  maxUs: number,
): number {
  if (count === 0) return 0;
  const rank = Math.max(1, Math.ceil(quantile * count));
  let seen = 0;
  for (let index = 0; index < buckets.length; index += 1) {
    seen += buckets[index]!;
    if (seen >= rank) return Math.min(latencyBucketUpperUs(index), maxUs);
  }
  return maxUs;
}
