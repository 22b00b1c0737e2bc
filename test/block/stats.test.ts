import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { BlockError, BlockErrorCode } from '../../src/block/errors.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { LATENCY_BUCKET_COUNT, STATS_VERBS, Stats } from '../../src/block/stats.js';

const SIZE_BYTES = 4 * 1024 * 1024;
const KIB = 1024;

/** Reads wait until `release()`; lets a test hold requests in flight. */
class GatedReads extends PassThrough {
  private readonly gates: Array<() => void> = [];
  override async read(offset: number, length: number): Promise<Buffer> {
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return this.next.read(offset, length);
  }
  release(): void {
    for (const open of this.gates.splice(0)) open();
  }
}

/** Reads at offset 0 take `slowMs`; all others answer at once. */
class SlowAtZero extends PassThrough {
  constructor(
    next: MemoryDevice,
    private readonly slowMs: number,
  ) {
    super(next);
  }
  override async read(offset: number, length: number): Promise<Buffer> {
    if (offset === 0) await sleep(this.slowMs);
    return this.next.read(offset, length);
  }
}

describe('Stats', () => {
  it('counts operations and bytes per verb exactly', async () => {
    const stats = new Stats(new MemoryDevice(SIZE_BYTES));
    for (let i = 0; i < 3; i += 1) await stats.write(i * 4 * KIB, Buffer.alloc(4 * KIB, 1));
    await stats.read(0, 8 * KIB);
    await stats.read(8 * KIB, 8 * KIB);
    await stats.writeZeroes(64 * KIB, 64 * KIB);
    await stats.trim(128 * KIB, 64 * KIB);
    await stats.flush();
    await stats.flush();
    await stats.cache(0, 4 * KIB);
    await stats.extents(0, 1024 * KIB);

    const { verbs, inFlight } = stats.snapshot();
    const counted = Object.fromEntries(
      STATS_VERBS.map((verb) => [
        verb,
        [verbs[verb].operations, verbs[verb].bytes, verbs[verb].errors],
      ]),
    );
    assert.deepEqual(counted, {
      read: [2, 16 * KIB, 0],
      write: [3, 12 * KIB, 0],
      writeZeroes: [1, 64 * KIB, 0],
      trim: [1, 64 * KIB, 0],
      flush: [2, 0, 0],
      cache: [1, 4 * KIB, 0],
      extents: [1, 1024 * KIB, 0],
    });
    assert.equal(inFlight, 0);
    for (const verb of STATS_VERBS) {
      const { buckets } = verbs[verb].latency;
      assert.equal(buckets.length, LATENCY_BUCKET_COUNT);
      assert.equal(
        buckets.reduce((sum, n) => sum + n, 0),
        verbs[verb].operations,
        `${verb}: every success lands in one bucket`,
      );
    }
  });

  it('counts errors and rethrows the very same error', async () => {
    const failure = new BlockError(BlockErrorCode.EIO, 'medium error');
    class FailingWrites extends PassThrough {
      override write(): Promise<void> {
        return Promise.reject(failure);
      }
    }
    const stats = new Stats(new FailingWrites(new MemoryDevice(SIZE_BYTES)));
    await assert.rejects(stats.write(0, Buffer.alloc(512)), (error: unknown) => error === failure);
    await assert.rejects(
      stats.write(512, Buffer.alloc(512)),
      (error: unknown) => error === failure,
    );
    await stats.read(0, 512);

    const readOnly = new Stats(new MemoryDevice(SIZE_BYTES, { isReadOnly: true }));
    await assert.rejects(readOnly.trim(0, 512), { code: BlockErrorCode.EPERM });

    const { verbs, inFlight } = stats.snapshot();
    assert.deepEqual([verbs.write.operations, verbs.write.bytes, verbs.write.errors], [0, 0, 2]);
    assert.deepEqual([verbs.read.operations, verbs.read.errors], [1, 0]);
    assert.equal(inFlight, 0, 'a failed request leaves the in-flight count');
    assert.equal(readOnly.snapshot().verbs.trim.errors, 1);
  });

  it('tracks requests in flight and the peak', async () => {
    const gated = new GatedReads(new MemoryDevice(SIZE_BYTES));
    const stats = new Stats(gated);
    const reads = [stats.read(0, 512), stats.read(512, 512), stats.read(1024, 512)];
    assert.equal(stats.snapshot().inFlight, 3);
    gated.release();
    await Promise.all(reads);
    const after = stats.snapshot();
    assert.equal(after.inFlight, 0);
    assert.equal(after.inFlightPeak, 3);
    assert.equal(after.verbs.read.operations, 3);
  });

  it('gives sane percentiles: p50 among the fast, p99 and max at the slow', async () => {
    const slowMs = 30;
    const stats = new Stats(new SlowAtZero(new MemoryDevice(SIZE_BYTES), slowMs));
    for (let i = 1; i <= 98; i += 1) await stats.read(i * 4 * KIB, 4 * KIB);
    await Promise.all([stats.read(0, 4 * KIB), stats.read(0, 4 * KIB)]);

    const { latency, operations } = stats.snapshot().verbs.read;
    assert.equal(operations, 100);
    assert.ok(latency.p50Us < 5000, `p50 ${latency.p50Us} µs should be a fast read`);
    assert.ok(latency.maxUs >= slowMs * 900, `max ${latency.maxUs} µs should be the slow read`);
    assert.ok(latency.maxUs < 1_000_000, `max ${latency.maxUs} µs`);
    assert.ok(latency.p99Us >= slowMs * 500, `p99 ${latency.p99Us} µs should be a slow read`);
    assert.ok(latency.p50Us <= latency.p99Us && latency.p99Us <= latency.maxUs);
    assert.ok(latency.meanUs > latency.p50Us / 2 && latency.meanUs < latency.maxUs);
  });

  it('snapshots are plain JSON, detached from the live counters', async () => {
    const stats = new Stats(new MemoryDevice(SIZE_BYTES));
    const empty = stats.snapshot();
    assert.deepEqual(empty.verbs.read.latency, {
      p50Us: 0,
      p99Us: 0,
      maxUs: 0,
      meanUs: 0,
      buckets: new Array(LATENCY_BUCKET_COUNT).fill(0),
    });
    await stats.write(0, Buffer.alloc(512));
    const snapshot = stats.snapshot();
    assert.deepEqual(JSON.parse(JSON.stringify(snapshot)), snapshot);
    assert.ok(Math.abs(snapshot.timestampMs - Date.now()) < 1000);
    await stats.write(0, Buffer.alloc(512));
    assert.equal(snapshot.verbs.write.operations, 1, 'an old snapshot does not change');
    assert.equal(
      empty.verbs.write.latency.buckets.reduce((a, b) => a + b, 0),
      0,
    );
  });
});
