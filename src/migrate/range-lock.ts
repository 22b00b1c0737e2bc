/**
 * Byte ranges in flight, and waiting for the ones that overlap a new range. The mirror and sxm
 * methods use it so that a chunk being copied and a guest write to both sides never overlap in
 * time: otherwise the copy could read a block before the write reached the source and land it on
 * the destination after the write did, leaving old data there (QEMU's mirror_wait_on_conflicts).
 *
 * Not a reader/writer lock: every holder is exclusive over its range. Waiters are woken when any
 * overlapping holder releases, and re-check, so a long range cannot be starved by a stream of
 * short ones only as long as callers take `acquire` in turn. Bounded by its users' windows (the
 * copier's chunks in flight plus the guest's requests in flight).
 */
export interface RangeHold {
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

  /** Resolves once no held range overlaps `[offset, offset + length)`. Does not take it. */
  async waitClear(offset: number, length: number): Promise<void> {
    for (;;) {
      const overlap = this.firstOverlap(offset, offset + length);
      if (overlap === undefined) return;
      await overlap.released;
    }
  }

  /**
   * Waits until nothing overlaps, then holds the range; call the returned function once to
   * release it. Overlapping acquirers run one after another.
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

  /** Holds the range now, without waiting; the caller knows nothing overlaps or does not care. */
  hold(offset: number, length: number): () => void {
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

  /** Resolves once nothing at all is held (the switchover's quiesce). */
  async waitIdle(): Promise<void> {
    for (const entry of [...this.holds]) await entry.released;
    if (this.holds.size > 0) await this.waitIdle();
  }

  private firstOverlap(offset: number, end: number): RangeHold | undefined {
    for (const entry of this.holds) {
      if (entry.offset < end && offset < entry.end) return entry;
    }
    return undefined;
  }
}
