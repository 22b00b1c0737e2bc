import { performance } from 'node:perf_hooks';

/**
 * Progress of a copy: bytes done out of a total that may grow (a dbt pass adds the bytes it must
 * copy again), with the recent rate and an ETA. `doneBytes` never goes backwards; a growing total
 * is rendered honestly rather than hidden (STYLE.md, "Long-running work").
 *
 * The rate is measured over a sliding window of about `WINDOW_MS`, sampled at most every
 * `SAMPLE_MS`, so a single fast burst of holes does not promise an ETA the data cannot keep.
 */
const WINDOW_MS = 3000;
const SAMPLE_MS = 200;

export interface ProgressSnapshot {
  readonly doneBytes: number;
  readonly totalBytes: number;
  /** Bytes per second over the last few seconds; 0 before the first sample. */
  readonly rateBytesPerSecond: number;
  /** Seconds to finish at that rate; null while the rate is unknown. */
  readonly etaSeconds: number | null;
}

export class Progress {
  private done = 0;
  private total: number;
  /** (timeMs, doneBytes), oldest first, spanning at most WINDOW_MS plus one sample. */
  private readonly samples: Array<{ timeMs: number; doneBytes: number }> = [];

  constructor(totalBytes: number) {
    this.total = totalBytes;
    this.samples.push({ timeMs: performance.now(), doneBytes: 0 });
  }

  get doneBytes(): number {
    return this.done;
  }

  get totalBytes(): number {
    return this.total;
  }

  /** Counts `bytes` more as done; the total grows with it if done would pass it. */
  add(bytes: number): void {
    this.done += bytes;
    if (this.done > this.total) this.total = this.done;
    const nowMs = performance.now();
    const last = this.samples[this.samples.length - 1];
    if (last === undefined || nowMs - last.timeMs >= SAMPLE_MS) {
      this.samples.push({ timeMs: nowMs, doneBytes: this.done });
      while (this.samples.length > 2 && nowMs - (this.samples[1]?.timeMs ?? nowMs) > WINDOW_MS) {
        this.samples.shift();
      }
    }
  }

  /** More work appeared (bytes to copy again). */
  grow(bytes: number): void {
    this.total += bytes;
  }

  snapshot(): ProgressSnapshot {
    const nowMs = performance.now();
    const first = this.samples[0];
    const spanMs = first === undefined ? 0 : nowMs - first.timeMs;
    const rate =
      first === undefined || spanMs < SAMPLE_MS
        ? 0
        : ((this.done - first.doneBytes) * 1000) / spanMs;
    const left = Math.max(0, this.total - this.done);
    return {
      doneBytes: this.done,
      totalBytes: this.total,
      rateBytesPerSecond: Math.round(rate),
      etaSeconds: left === 0 ? 0 : rate > 0 ? Math.ceil(left / rate) : null,
    };
  }
}
