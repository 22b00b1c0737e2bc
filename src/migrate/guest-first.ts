import { assert } from '../util/assert.js';

/**
 * Guest first: how many copy chunks the copier may keep in flight, set from moment to moment by
 * what the guest's own I/O is going through, the way TCP sizes its window from what the path
 * does (and LEDBAT, the "background transfer" congestion control, from queueing delay):
 *
 * - every `intervalMs` the guest's requests completed in the interval, and their mean latency,
 *   are read from its meter (`GuestLatencySample`, cumulative counters);
 * - the guest's base latency is the lowest interval mean seen lately (a sliding minimum, so a
 *   change of workload moves it): what the guest gets when the copy is not in its way;
 * - above `base × LATENCY_SLACK` the window halves (the copy is queueing ahead of the guest: on
 *   the disk, in the thread pool or on the event loop); at or below it the window grows by one;
 *   with the guest (nearly) idle it doubles, up to the user's `windowMax`;
 * - it never goes below one chunk, so the copy always moves on, however busy the guest.
 *
 * It sits on top of the user's `--speed` (the throttle), which still caps the rate. The copier
 * stops asking it once guest I/O is held at the switchover: the final copy runs with every chunk.
 */
export interface GuestLatencySample {
  /** Guest data requests completed so far (reads, writes, zeroes, trims). */
  readonly operations: number;
  /** Their latencies, summed, in µs. */
  readonly latencySumUs: number;
}

export interface GuestFirstOptions {
  /** The largest window (the copier's `inFlightMax`). */
  readonly windowMax: number;
  /** Reads the guest's cumulative counters (a Stats filter in the guest's path). */
  readonly sample: () => GuestLatencySample;
  /** Default 50 ms. */
  readonly intervalMs?: number;
}

/** Latency the guest may see over its base before the copy backs off: 1.5× keeps ≥ 2/3 of its IOPS. */
export const LATENCY_SLACK = 1.5;
/** Below this many requests in an interval the guest counts as idle: its mean would be noise. */
const IDLE_OPERATIONS_MAX = 3;
/** Intervals the base latency is the minimum over (5 s at the default interval). */
const BASE_WINDOW_INTERVALS = 100;
/** Latency differences below this are timer noise, not queueing (µs). */
const NOISE_FLOOR_US = 50;

export class GuestFirst {
  private windowNow = 1;
  private readonly windowMax: number;
  private readonly sample: () => GuestLatencySample;
  private readonly intervalMs: number;
  private last: GuestLatencySample;
  /** Interval means of the last BASE_WINDOW_INTERVALS busy intervals, oldest first. */
  private readonly recentMeansUs: number[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** Halvings and growths, for tests. */
  backoffs = 0;
  growths = 0;

  constructor(options: GuestFirstOptions) {
    assert(options.windowMax >= 1, 'guest-first window max is at least 1');
    this.windowMax = options.windowMax;
    this.sample = options.sample;
    this.intervalMs = options.intervalMs ?? 50;
    this.last = this.sample();
  }

  /** Chunks the copier may have in flight now (1..windowMax). */
  get window(): number {
    return this.windowNow;
  }

  /** Starts adapting; the window starts at 1 and grows while the guest does not suffer. */
  start(): void {
    if (this.timer !== undefined) return;
    this.last = this.sample();
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    // A migration's own timer must not keep a process alive that has nothing else to do.
    this.timer.unref();
  }

  /** Stops adapting: the window is the largest from now on (the guest is held or gone). */
  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.windowNow = this.windowMax;
  }

  /** One interval: the guest's mean latency in it against its base; public for tests. */
  tick(): void {
    const now = this.sample();
    const operations = now.operations - this.last.operations;
    const latencySumUs = now.latencySumUs - this.last.latencySumUs;
    this.last = now;
    if (operations < IDLE_OPERATIONS_MAX) {
      this.resize(Math.min(this.windowMax, this.windowNow * 2));
      return;
    }
    const meanUs = latencySumUs / operations;
    this.recentMeansUs.push(meanUs);
    if (this.recentMeansUs.length > BASE_WINDOW_INTERVALS) this.recentMeansUs.shift();
    const baseUs = Math.min(...this.recentMeansUs);
    if (meanUs > baseUs * LATENCY_SLACK + NOISE_FLOOR_US) {
      this.resize(Math.max(1, Math.floor(this.windowNow / 2)));
    } else {
      this.resize(Math.min(this.windowMax, this.windowNow + 1));
    }
  }

  private resize(window: number): void {
    if (window > this.windowNow) this.growths += 1;
    if (window < this.windowNow) this.backoffs += 1;
    this.windowNow = window;
  }
}
