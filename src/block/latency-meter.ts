import { performance } from 'node:perf_hooks';
import type { WriteOptions, ZeroOptions } from './device.js';
import { PassThrough } from './filter.js';

/**
 * Counts the guest's data requests (reads, writes, zeroes, trims) and sums their latencies, as
 * the guest sees them: placed right below the Switch, above the migration method's filter, so a
 * write waiting on a copy chunk's range lock or on its mirrored copy counts whole. The guest-
 * first window (src/migrate/guest-first.ts) reads the totals; several meters may share one
 * (a method that re-interposes keeps counting into the same totals).
 *
 * Lighter than Stats: two clock reads and two additions per request, no histogram. Flushes are
 * left out: their time is the disk's write-back, not queueing behind the copy.
 */
export interface LatencyTotals {
  operations: number;
  latencySumUs: number;
}

export class LatencyMeter extends PassThrough {
  readonly totals: LatencyTotals;

  constructor(next: ConstructorParameters<typeof PassThrough>[0], totals?: LatencyTotals) {
    super(next);
    this.totals = totals ?? { operations: 0, latencySumUs: 0 };
  }

  override read(offset: number, length: number): Promise<Buffer> {
    const startMs = performance.now();
    return this.next.read(offset, length).then((data) => {
      this.count(startMs);
      return data;
    });
  }

  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    const startMs = performance.now();
    return this.next.write(offset, data, options).then(() => this.count(startMs));
  }

  override writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    const startMs = performance.now();
    return this.next.writeZeroes(offset, length, options).then(() => this.count(startMs));
  }

  override trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    const startMs = performance.now();
    return this.next.trim(offset, length, options).then(() => this.count(startMs));
  }

  private count(startMs: number): void {
    this.totals.operations += 1;
    this.totals.latencySumUs += (performance.now() - startMs) * 1000;
  }
}
