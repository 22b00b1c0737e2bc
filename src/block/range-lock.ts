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
 */
interface RangeHold {
  readonly offset: number;
  readonly end: number;
  /** Settles when this hold is released. */
  readonly released: Promise<void>;
}

export class RangeLock {
  private readonly holds = new Set<RangeHold>();

  /** How many ranges are held now. */
  get heldCount(): number {
    return this.holds.size;
  }

  /**
   * Waits until nothing overlaps `[offset, offset + length)`, then holds it; call the returned
   * function once to release it (later calls do nothing). Overlapping acquirers run one after
   * another.
   */
  async acquire(offset: number, length: number): Promise<() => void> {
    // Check and take in the same turn: between an awaited check and the take, another acquirer
    // could slip in.
    for (;;) {
      const overlap = this.firstOverlap(offset, offset + length);
      if (overlap === undefined) return this.hold(offset, length);
      await overlap.released;
    }
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
