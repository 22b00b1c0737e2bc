import assert from 'node:assert/strict';
import { test } from 'node:test';
import { diskRates } from '../../src/api/stats-rates.js';
import { STATS_VERBS, type StatsSnapshot, type StatsVerb } from '../../src/block/stats.js';

type Counts = Partial<Record<StatsVerb, { operations: number; bytes: number; meanUs?: number }>>;

/** A snapshot at `timestampMs` with the given per-verb counters (the rest zero). */
function snapshot(timestampMs: number, counts: Counts): StatsSnapshot {
  const verbs = {} as Record<StatsVerb, StatsSnapshot['verbs'][StatsVerb]>;
  for (const verb of STATS_VERBS) {
    const count = counts[verb] ?? { operations: 0, bytes: 0 };
    const meanUs = count.meanUs ?? 0;
    verbs[verb] = {
      operations: count.operations,
      bytes: count.bytes,
      errors: 0,
      latency: { p50Us: meanUs, p99Us: meanUs, maxUs: meanUs, meanUs, buckets: [] },
    };
  }
  return { timestampMs, inFlight: 0, inFlightPeak: 0, verbs };
}

test('rates over the interval: IOPS, payload bytes per second, mean latency of reads and writes', () => {
  const before = snapshot(10_000, {
    read: { operations: 100, bytes: 409_600, meanUs: 100 },
    write: { operations: 50, bytes: 204_800, meanUs: 200 },
  });
  const after = snapshot(12_000, {
    // 200 more reads at a mean of 400 µs: the total mean is (100·100 + 200·400) / 300 = 300.
    read: { operations: 300, bytes: 1_228_800, meanUs: 300 },
    // 100 more writes, all at 200 µs.
    write: { operations: 150, bytes: 614_400, meanUs: 200 },
    writeZeroes: { operations: 10, bytes: 10 * 1024 * 1024 },
    trim: { operations: 10, bytes: 1024 * 1024 },
  });
  assert.deepEqual(diskRates(before, after), {
    readIops: 100,
    writeIops: 60,
    readBytesPerSecond: 409_600,
    writeBytesPerSecond: 204_800,
    // (200·400 + 100·200) / 300 µs
    latencyMs: 0.333,
  });
});

test('an idle interval has no latency, and no baseline gives all zeros', () => {
  const quiet = snapshot(1_000, { read: { operations: 5, bytes: 20_480, meanUs: 50 } });
  const later = snapshot(2_000, { read: { operations: 5, bytes: 20_480, meanUs: 50 } });
  const idle = {
    readIops: 0,
    writeIops: 0,
    readBytesPerSecond: 0,
    writeBytesPerSecond: 0,
    latencyMs: null,
  };
  assert.deepEqual(diskRates(quiet, later), idle);
  assert.deepEqual(diskRates(undefined, later), idle);
  assert.deepEqual(diskRates(later, later), idle, 'no time between: no rate');
});

test('counters that went backwards are a fresh filter: the interval counts from zero', () => {
  const before = snapshot(1_000, {
    read: { operations: 1_000, bytes: 4_096_000, meanUs: 10 },
    write: { operations: 1_000, bytes: 4_096_000, meanUs: 10 },
  });
  // Reads grew but writes restarted: still a reset, never a negative rate.
  const after = snapshot(2_000, {
    read: { operations: 1_010, bytes: 4_136_960, meanUs: 10 },
    write: { operations: 20, bytes: 81_920, meanUs: 10 },
  });
  const rates = diskRates(before, after);
  assert.equal(rates.readIops, 1_010);
  assert.equal(rates.writeIops, 20);
  assert.equal(rates.writeBytesPerSecond, 81_920);
  for (const value of Object.values(rates)) assert.ok(value === null || value >= 0);
});
