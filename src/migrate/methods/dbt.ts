/**
 * The `dbt` method (ESX 4.x Storage vMotion with changed block tracking): a `DirtyTracker` in the
 * guest's path records every granule the guest writes, zeroes or trims; the copier copies the
 * whole disk once, then, pass after pass, what the guest wrote meanwhile, until what is left can
 * be copied within the downtime target at the rate the passes measured. Guest writes go to the
 * source only; only the copier writes the target.
 *
 * Invariant (what is on the target, and when a write may be acknowledged):
 *   Between passes (where the final copy and the hand-over to the mirror happen), once the
 *   guest's writes in flight have settled, every granule clean in the tracker's `bitmap` and in
 *   `carried` holds on the target exactly what it holds on the source.
 *   A write is acknowledged as soon as the source has it: the tracker marks it when it settles.
 *   So the final copy, with guest I/O drained, copying what is dirty, makes the target equal the
 *   source.
 *
 * Why no RangeLock (mirror and sxm need one: they write the target from the guest's path):
 *   - A pass forks (STYLE.md): it takes the tracker's bitmap as its own and gives the tracker a
 *     fresh one in the same turn, so every write that settles later marks the fresh one.
 *   - The pass's bitmap then has one writer, the copier, which clears a run before reading it;
 *     the read starts after the fork, hence after every write marked in that bitmap settled, and
 *     sees its data or newer.
 *   - A write that races a copy chunk settles after the fork and marks the fresh bitmap: the
 *     chunk may carry old or new data, and either way a later pass or the final copy copies the
 *     granule again. Passes run one after another, so an older copy never lands over a newer one.
 *   A pass that fails puts what it has not copied (the copier re-marks a failed chunk) back in
 *   `carried`, and the job fails; the source has every write, so there is nothing to roll back.
 *
 * Hot blocks (DESIGN.md, method 2): with `isHotBlockAvoidance`, a granule the guest wrote during
 * two consecutive passes joins `hot` and is skipped until the final copy; it stays in the dirty
 * set meanwhile. It stays hot: judged afresh each pass, blocks flap, since a short pass is too
 * short to see a hot block written again and the next pass then copies it for nothing. The first
 * pass copies the whole disk, not a written set, so it is no evidence of heat. Each pass copies
 * something: the dirty set did not fit the target and the hot blocks alone do.
 *
 * Not converging: after `passMax` passes in one `converge()`, or as soon as the hot blocks alone
 * no longer fit the downtime target (then no pass can help), the job continues as `mirror`
 * (event `method`). The mirror's "not yet copied" bitmap is the tracker's own bitmap with
 * `carried` merged in: until the Switch is re-pointed the tracker keeps marking it, and
 * `interpose` drains the guest's I/O before re-pointing, so every write lands either through the
 * tracker (marked) or through the mirror. At that instant no pass is in flight and the invariant
 * above is exactly the mirror's (mirror.ts) with nothing in its lock and nothing in its queue;
 * from then on the mirror's invariant holds, in the job's `mirrorMode` (sync, async or auto).
 */
import { performance } from 'node:perf_hooks';
import { DirtyBitmap } from '../../block/dirty-bitmap.js';
import { DirtyTracker } from '../../block/dirty-tracker.js';
import { assert } from '../../util/assert.js';
import { formatSize } from '../../util/size.js';
import { checkNotCancelled } from '../errors.js';
import type { Method, MethodContext, MethodRun, MirrorStats } from '../method.js';
import { MirrorCopy } from './mirror.js';

/** The share of the downtime target the final copy may take; the flush takes about as long. */
const FINAL_COPY_SHARE = 0.5;
/**
 * The first pass walks the disk in order; a later pass copies scattered granules, measured at
 * about a third of that speed here (bench/migrate, dbt section). Until a later pass has been
 * measured, the first pass's rate counts at this fraction.
 */
const FIRST_PASS_DISCOUNT = 0.3;

export const dbt: Method = (context) => new DbtRun(context);

class DbtRun implements MethodRun {
  private readonly context: MethodContext;
  private readonly tracker: DirtyTracker;
  /** Still to copy but not in the tracker's bitmap: skipped hot blocks, a failed pass's rest. */
  private readonly carried: DirtyBitmap;
  /** Granules written during two consecutive passes; skipped until the final copy. */
  private readonly hot: DirtyBitmap;
  /** What the guest wrote during the previous pass (the first one excepted), to find `hot`. */
  private lastWritten: DirtyBitmap | undefined;
  /** The bitmap a pass copies now; `carried` is merged into it and empty meanwhile. */
  private inPass: DirtyBitmap | undefined;
  private passesDbt = 0;
  private isTracking = false;
  /**
   * The last completed pass, for the measured copy rate: the rate of copying a dirty set (scattered
   * granules), not of the first pass's sequential walk, which is several times faster.
   */
  private meter = { copiedBytes: 0, handledBytes: 0, elapsedMs: 0, isFirstPass: true };
  /** The mirror that finishes the job once dbt could not converge (mirror.ts). */
  private takeover: MirrorCopy | undefined;

  constructor(context: MethodContext) {
    assert(context.tuning.passMax >= 1, 'dbt needs at least one pass');
    this.context = context;
    this.tracker = new DirtyTracker(context.source, this.newBitmap());
    this.carried = this.newBitmap();
    this.hot = this.newBitmap();
  }

  get dirtyBytes(): number {
    if (this.takeover !== undefined) return this.takeover.dirtyBytes;
    return this.tracker.bitmap.unionDirtyBytes(this.inPass ?? this.carried);
  }

  get passes(): number {
    return this.passesDbt + (this.takeover?.passes ?? 0);
  }

  get mirrorStats(): MirrorStats | undefined {
    return this.takeover?.mirrorStats;
  }

  /**
   * First call: puts the tracker in the guest's path and copies the whole disk. Every call: copies
   * what is dirty, pass after pass, until it fits the downtime target, at most `passMax` passes
   * per call (the first one included), else hands over to the mirror, which copies until clean.
   */
  async converge(): Promise<void> {
    let passesLeft = this.context.tuning.passMax;
    if (this.takeover === undefined && !this.isTracking) {
      await this.context.interpose(this.tracker);
      this.isTracking = true;
      this.context.emit({ type: 'phase', phase: 'copy' });
      const whole = this.newBitmap();
      this.context.markInitial(whole);
      await this.copyPass(whole, undefined, false);
      passesLeft -= 1;
    }
    if (this.takeover === undefined) await this.passUntilFits(passesLeft);
    await this.takeover?.converge();
  }

  async settle(): Promise<void> {
    await this.takeover?.settle();
  }

  /** With guest I/O held and drained: everything still dirty, hot blocks included. */
  async finalCopy(): Promise<void> {
    if (this.takeover !== undefined) {
      await this.takeover.finalCopy();
      return;
    }
    const last = this.fork();
    last.merge(this.carried);
    this.carried.clearAll();
    this.context.progress.grow(last.dirtyBytes);
    await this.copyForked(last, undefined);
  }

  /** The source has every write (only the copier and the mirror add the target): nothing to undo. */
  async rollback(): Promise<void> {}

  async dispose(): Promise<void> {
    await this.takeover?.dispose();
  }

  private async passUntilFits(passesMax: number): Promise<void> {
    for (let passesLeft = passesMax; ; passesLeft -= 1) {
      checkNotCancelled(this.context.signal);
      const dirtyBytes = this.dirtyBytes;
      if (this.fits(dirtyBytes)) return;
      if (passesLeft === 0) {
        await this.handOver(`${formatSize(dirtyBytes)} still dirty after ${this.passesDbt} passes`);
        return;
      }
      const written = this.fork();
      const skip = this.findHot(written);
      if (!this.fits(this.hot.dirtyBytes)) {
        this.carried.merge(written);
        await this.handOver(
          `the guest keeps rewriting ${formatSize(this.hot.dirtyBytes)} of hot blocks`,
        );
        return;
      }
      await this.copyPass(written, skip, true);
    }
  }

  /**
   * Copies `bitmap` (merged with `carried`) once, leaving `skip` for later, and counts the pass.
   * `isExtra`: the bytes were not in the progress total yet (every pass after the first).
   */
  private async copyPass(
    bitmap: DirtyBitmap,
    skip: DirtyBitmap | undefined,
    isExtra: boolean,
  ): Promise<void> {
    bitmap.merge(this.carried);
    this.carried.clearAll();
    this.passesDbt += 1;
    const dirtyBytes = bitmap.dirtyBytes;
    this.context.emit({ type: 'pass', pass: this.passes, dirtyBytes });
    const skipBytes = skip?.dirtyBytes ?? 0;
    if (skipBytes > 0) {
      const hot = formatSize(skipBytes);
      const message = `pass ${this.passes} leaves ${hot} of hot blocks for the final copy`;
      this.context.emit({ type: 'message', message });
    }
    const handledBytes = dirtyBytes - skipBytes;
    if (isExtra) this.context.progress.grow(handledBytes);
    const copiedBefore = this.context.copier.copiedBytes;
    const startedMs = performance.now();
    await this.copyForked(bitmap, skip);
    this.meter = {
      copiedBytes: this.context.copier.copiedBytes - copiedBefore,
      handledBytes,
      elapsedMs: performance.now() - startedMs,
      isFirstPass: this.passesDbt <= 1,
    };
  }

  /** Copies a bitmap no one else marks; what it leaves (skipped, or failed) goes to `carried`. */
  private async copyForked(bitmap: DirtyBitmap, skip: DirtyBitmap | undefined): Promise<void> {
    this.inPass = bitmap;
    try {
      await this.context.copier.copyPass(bitmap, skip === undefined ? {} : { skip });
    } finally {
      this.carried.merge(bitmap);
      this.inPass = undefined;
    }
  }

  /** The tracker's bitmap, replaced by a fresh one in the same turn, so no write goes unmarked. */
  private fork(): DirtyBitmap {
    const written = this.tracker.bitmap;
    this.tracker.bitmap = this.newBitmap();
    return written;
  }

  /** Adds to `hot` what was written during this pass and the one before; returns it to skip. */
  private findHot(written: DirtyBitmap): DirtyBitmap | undefined {
    if (!this.context.tuning.isHotBlockAvoidance) return undefined;
    if (this.lastWritten !== undefined) this.hot.merge(this.lastWritten.intersection(written));
    this.lastWritten = written.clone();
    return this.hot.isClean ? undefined : this.hot;
  }

  /**
   * True when `bytes` can be copied within the copy's share of the downtime target at the
   * measured rate: the stun also drains guest I/O and flushes what the final copy wrote, which
   * measured about as long as the copy itself.
   */
  private fits(bytes: number): boolean {
    if (bytes === 0) return true;
    const rate = this.rateBytesPerSecond;
    const budgetMs = this.context.tuning.downtimeTargetMs * FINAL_COPY_SHARE;
    return rate > 0 && (bytes * 1000) / rate <= budgetMs;
  }

  /**
   * Data bytes copied per second of pass time; the bytes handled instead while no data was
   * copied at all (a disk of holes), which the zeroing of runs then bounds.
   */
  private get rateBytesPerSecond(): number {
    const { copiedBytes, handledBytes, elapsedMs, isFirstPass } = this.meter;
    if (elapsedMs <= 0) return 0;
    const rate = ((copiedBytes > 0 ? copiedBytes : handledBytes) * 1000) / elapsedMs;
    return isFirstPass ? rate * FIRST_PASS_DISCOUNT : rate;
  }

  /** Continues as the mirror, from what is dirty now (see the comment at the top). */
  private async handOver(why: string): Promise<void> {
    const toCopy = this.tracker.bitmap;
    toCopy.merge(this.carried);
    this.carried.clearAll();
    const rate = formatSize(Math.round(this.rateBytesPerSecond));
    const target = this.context.tuning.downtimeTargetMs;
    const reason = `dbt did not converge: ${why}, more than ${target} ms at ${rate}/s`;
    this.takeover = new MirrorCopy(this.context, toCopy, { isInTotal: false });
    this.context.emit({ type: 'method', method: 'mirror', reason });
    await this.takeover.start();
  }

  private newBitmap(): DirtyBitmap {
    return new DirtyBitmap(this.context.source.size, this.context.tuning.granularityBytes);
  }
}
