import type { StatsSnapshot } from '../block/stats.js';

/**
 * Guest latency and IOPS per disk over a sliding window, from the disks' cumulative counters
 * (block/stats.ts). Storage DRS compares a datastore's latency with its cluster's threshold over
 * this window (as vSphere SDRS does over its own), so one slow second does not move a disk.
 *
 * The counters count only the guest's requests: a migration's copier reads below them
 * (migrate/migration.ts, `copySource`), so a move does not make its own source look busy.
 * Each sample is a disk's totals at one time; the window's figures are the difference between
 * the newest sample and the oldest one still inside the window. Samples are bounded by the
 * window over the sampling interval.
 */
export interface LatencyTotals {
  readonly timeMs: number;
  readonly operations: number;
  readonly latencySumUs: number;
}

/** The verbs that are guest I/O (extents and cache are hints, not requests the guest waits on). */
const GUEST_VERBS = ['read', 'write', 'writeZeroes', 'trim', 'flush'] as const;

export function totalsOf(snapshot: StatsSnapshot, timeMs: number): LatencyTotals {
  let operations = 0;
  let latencySumUs = 0;
  for (const verb of GUEST_VERBS) {
    const stats = snapshot.verbs[verb];
    operations += stats.operations;
    latencySumUs += stats.latency.meanUs * stats.operations;
  }
  return { timeMs, operations, latencySumUs };
}

export interface WindowFigures {
  /** Mean latency of the guest requests in the window, ms; null when there were none. */
  readonly latencyMs: number | null;
  readonly iops: number;
  readonly operations: number;
  readonly latencySumUs: number;
}

export class LatencyWindow {
  private readonly samples = new Map<string, LatencyTotals[]>();

  constructor(readonly windowMs: number) {}

  /** Records `disk`'s totals; drops samples older than the window (keeping one at its edge). */
  add(disk: string, totals: LatencyTotals): void {
    const list = this.samples.get(disk) ?? [];
    const last = list[list.length - 1];
    // A disk re-opened (moved back, recreated) restarts its counters: start over.
    if (last !== undefined && totals.operations < last.operations) list.length = 0;
    list.push(totals);
    while (list.length > 2 && list[1]!.timeMs <= totals.timeMs - this.windowMs) list.shift();
    this.samples.set(disk, list);
  }

  /** Forgets disks that are gone. */
  retain(disks: ReadonlySet<string>): void {
    for (const disk of this.samples.keys()) if (!disks.has(disk)) this.samples.delete(disk);
  }

  figuresOf(disk: string): WindowFigures {
    const list = this.samples.get(disk) ?? [];
    const first = list[0];
    const last = list[list.length - 1];
    if (first === undefined || last === undefined || first === last) {
      return { latencyMs: null, iops: 0, operations: 0, latencySumUs: 0 };
    }
    const operations = last.operations - first.operations;
    const latencySumUs = last.latencySumUs - first.latencySumUs;
    const seconds = (last.timeMs - first.timeMs) / 1000;
    return {
      latencyMs: operations === 0 ? null : latencySumUs / operations / 1000,
      iops: seconds > 0 ? operations / seconds : 0,
      operations,
      latencySumUs,
    };
  }
}
