/**
 * Exclusive holds over runs of granules (granule indexes `first..last`, inclusive), for a filter
 * that rewrites whole granules: the `Overlay`'s copy-on-write reads a granule, changes a few bytes
 * and writes it back, and two such read-modify-writes of one granule that overlap in time would
 * lose the bytes of whichever wrote first (nbdkit's cow filter takes a lock for the same reason).
 *
 * Same shape as migrate/'s RangeLock, which block/ may not import (layering, STYLE.md "Layout").
 * A holder waits for every overlapping hold to be released and takes its whole run in the same
 * turn, so there is no lock ordering and no deadlock. Bounded by the callers' in-flight windows
 * (the guest's requests in flight): the set holds one entry per request, scanned linearly.
 */
interface GranuleHold {
  readonly first: number;
  readonly last: number;
  /** Settles when this hold is released. */
  readonly released: Promise<void>;
}

export class GranuleLock {
  private readonly holds = new Set<GranuleHold>();

  /** How many runs are held now. */
  get heldCount(): number {
    return this.holds.size;
  }

  /**
   * Waits until no held run overlaps `first..last`, then holds it; call the returned function
   * once to release (later calls do nothing).
   */
  async acquire(first: number, last: number): Promise<() => void> {
    for (;;) {
      const overlap = this.firstOverlap(first, last);
      if (overlap === undefined) return this.hold(first, last);
      await overlap.released;
    }
  }

  private hold(first: number, last: number): () => void {
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const entry: GranuleHold = { first, last, released };
    this.holds.add(entry);
    let isReleased = false;
    return () => {
      if (isReleased) return;
      isReleased = true;
      this.holds.delete(entry);
      release();
    };
  }

  private firstOverlap(first: number, last: number): GranuleHold | undefined {
    for (const entry of this.holds) {
      if (entry.first <= last && first <= entry.last) return entry;
    }
    return undefined;
  }
}
