import { performance } from 'node:perf_hooks';

/**
 * Exclusive holds over byte ranges, for work that must not overlap in time where its ranges
 * overlap:
 * - the `Overlay`'s copy-on-write reads a granule, changes a few bytes and writes it back; two
 *   such read-modify-writes of one granule that overlap in time would lose the bytes of whichever
 *   wrote first (nbdkit's cow filter takes a lock for the same reason). It holds whole granules:
 *   a granule range is a byte range rounded out to granules.
 * - the mirror and sxm methods (migrate/), so that a chunk being copied and a guest write to both
 *   sides never overlap in time: otherwise the copy could read a block before the write reached
 *   the source and land it on the destination after the write did, leaving old data there
 *   (QEMU's mirror_wait_on_conflicts).
 *
 * Not a reader/writer lock: every holder is exclusive over its range. An acquirer waits for every
 * overlapping hold to be released and takes its whole range in the same turn, so there is no lock
 * ordering and no deadlock; waiters are woken when any overlapping holder releases, and re-check.
 * Bounded by its users' windows (the copier's chunks in flight plus the guest's requests in
 * flight): the set holds one entry per holder, scanned linearly.
 *
 * It counts the acquires that had to wait and how long they waited (issue 9: where the guest
 * waits), for all acquirers in `waits` and, for one kind of acquirer (the guest's writes, not the
 * copier's chunks), in the tally that acquirer passes. The clock is read only once an overlap is
 * found, so an uncontended acquire costs only its count.
 */
interface RangeHold {
  readonly offset: number;
  readonly end: number;
  /** Settles when this hold is released. */
  readonly released: Promise<void>;
}

/** Acquires counted by a `RangeLock`: all of them, those that waited, and the time they waited. */
export class LockWaits {
  acquires = 0;
  /** Acquires that found an overlapping hold and waited for it (once each, however many). */
  waits = 0;
  /** From the first overlap found to the hold taken, summed over the acquires that waited. */
  waitMs = 0;
}

export class RangeLock {
  /** Every acquire's, whoever asked. */
  readonly waits = new LockWaits();
  private readonly holds = new Set<RangeHold>();

  /** How many ranges are held now. */
  get heldCount(): number {
    return this.holds.size;
  }

  /**
   * Waits until nothing overlaps `[offset, offset + length)`, then holds it; call the returned
   * function once to release it (later calls do nothing). Overlapping acquirers run one after
   * another. Counted in `waits`, and in `tally` too when given.
   */
  async acquire(offset: number, length: number, tally?: LockWaits): Promise<() => void> {
    this.waits.acquires += 1;
    if (tally !== undefined) tally.acquires += 1;
    // Check and take in the same turn: between an awaited check and the take, another acquirer
    // could slip in.
    let overlap = this.firstOverlap(offset, offset + length);
    if (overlap === undefined) return this.hold(offset, length);
    const startMs = performance.now();
    do {
      await overlap.released;
      overlap = this.firstOverlap(offset, offset + length);
    } while (overlap !== undefined);
    const waitMs = performance.now() - startMs;
    this.waits.waits += 1;
    this.waits.waitMs += waitMs;
    if (tally !== undefined) {
      tally.waits += 1;
      tally.waitMs += waitMs;
    }
    return this.hold(offset, length);
  }

  /** Resolves once nothing at all is held (the switchover's quiesce). */
  async waitIdle(): Promise<void> {
    for (const entry of [...this.holds]) await entry.released;
    if (this.holds.size > 0) await this.waitIdle();
  }

  private hold(offset: number, length: number): () => void {
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const entry: RangeHold = { offset, end: offset + length, released };
    this.holds.add(entry);
    let isReleased = false;
    return () => {
      if (isReleased) return;
      isReleased = true;
      this.holds.delete(entry);
      release();
    };
  }

  private firstOverlap(offset: number, end: number): RangeHold | undefined {
    for (const entry of this.holds) {
      if (entry.offset < end && offset < entry.end) return entry;
    }
    return undefined;
  }
}
