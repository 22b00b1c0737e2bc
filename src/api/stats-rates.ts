import { STATS_VERBS, type StatsSnapshot } from '../block/stats.js';

/**
 * One disk's guest I/O over the interval between two Stats snapshots (block/stats.ts): the rates
 * the live stats stream (routes/stats-events.ts) and the dashboard show.
 *
 * - `readIops`: completed reads per second;
 * - `writeIops`: completed writes, write-zeroes and trims per second (each is a guest write);
 * - bytes per second: payload of reads and of writes only (a zero or trim names a range, it
 *   carries no data);
 * - `latencyMs`: mean latency of the reads and writes that completed in the interval, or null
 *   when none did (an idle disk has no latency, rather than 0).
 *
 * Counters only grow while one Stats filter serves the disk; if they went backwards the disk was
 * reopened with fresh counters, and the interval counts from zero.
 */
export interface DiskRates {
  readonly readIops: number;
  readonly writeIops: number;
  readonly readBytesPerSecond: number;
  readonly writeBytesPerSecond: number;
  readonly latencyMs: number | null;
}

const IDLE: DiskRates = {
  readIops: 0,
  writeIops: 0,
  readBytesPerSecond: 0,
  writeBytesPerSecond: 0,
  latencyMs: null,
};

/** Rates from `before` to `after`; all zero (latency null) without a `before` or a time between. */
export function diskRates(before: StatsSnapshot | undefined, after: StatsSnapshot): DiskRates {
  if (before === undefined) return IDLE;
  const seconds = (after.timestampMs - before.timestampMs) / 1000;
  if (seconds <= 0) return IDLE;
  const base = wasReset(before, after) ? undefined : before;
  const delta = (pick: (s: StatsSnapshot) => number): number =>
    pick(after) - (base === undefined ? 0 : pick(base));
  const reads = delta((s) => s.verbs.read.operations);
  const writes = delta((s) => s.verbs.write.operations);
  const otherWrites = delta((s) => s.verbs.writeZeroes.operations + s.verbs.trim.operations);
  // Stats keeps a mean per verb; mean × count is the latency sum the interval adds to.
  const latencySumUs = delta(
    (s) =>
      s.verbs.read.latency.meanUs * s.verbs.read.operations +
      s.verbs.write.latency.meanUs * s.verbs.write.operations,
  );
  return {
    readIops: round(reads / seconds),
    writeIops: round((writes + otherWrites) / seconds),
    readBytesPerSecond: Math.round(delta((s) => s.verbs.read.bytes) / seconds),
    writeBytesPerSecond: Math.round(delta((s) => s.verbs.write.bytes) / seconds),
    latencyMs: reads + writes > 0 ? round(latencySumUs / (reads + writes) / 1000, 3) : null,
  };
}

/** Some counter went backwards: `after` is of a fresh Stats filter, not `before`'s. */
function wasReset(before: StatsSnapshot, after: StatsSnapshot): boolean {
  return STATS_VERBS.some(
    (verb) =>
      after.verbs[verb].operations < before.verbs[verb].operations ||
      after.verbs[verb].bytes < before.verbs[verb].bytes,
  );
}

function round(value: number, digits = 1): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
