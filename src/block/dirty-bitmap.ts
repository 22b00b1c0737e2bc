import { assert } from '../util/assert.js';

/**
 * Which parts of a disk have been written since a point in time, at a fixed granularity (a
 * power of two, 64 KiB by default, as QEMU's mirror uses). A write of any size marks every
 * granule it touches, so the bitmap may say more is dirty than was written, never less.
 *
 * Used by the migration methods (DESIGN.md): the copier clears a granule *before* reading it for
 * copy, so a guest write that races the read marks it again (STYLE.md, dirty-tracking rule 1),
 * and re-marks it if the copy fails (rule 2). Memory: one bit per granule, 2 MiB for 1 TiB at
 * 64 KiB.
 */
export class DirtyBitmap {
  readonly sizeBytes: number;
  readonly granularityBytes: number;
  private readonly words: Uint32Array;
  private readonly granuleCount: number;
  private dirtyGranules = 0;

  constructor(sizeBytes: number, granularityBytes = 64 * 1024) {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, 'bitmap size');
    assert(
      Number.isSafeInteger(granularityBytes) &&
        granularityBytes > 0 &&
        (granularityBytes & (granularityBytes - 1)) === 0,
      'bitmap granularity must be a power of two',
    );
    this.sizeBytes = sizeBytes;
    this.granularityBytes = granularityBytes;
    this.granuleCount = Math.ceil(sizeBytes / granularityBytes);
    this.words = new Uint32Array(Math.ceil(this.granuleCount / 32));
  }

  /** Bytes covered by dirty granules (the last granule counts only up to the disk's end). */
  get dirtyBytes(): number {
    if (this.dirtyGranules === 0) return 0;
    const last = this.granuleCount - 1;
    const tailShort = this.granuleCount * this.granularityBytes - this.sizeBytes;
    return this.dirtyGranules * this.granularityBytes - (this.testGranule(last) ? tailShort : 0);
  }

  /** Marks every granule that `[offset, offset + length)` touches. */
  mark(offset: number, length: number): void {
    this.forGranules(offset, length, (index) => this.setGranule(index, true));
  }

  /** Clears every granule that `[offset, offset + length)` touches. */
  clear(offset: number, length: number): void {
    this.forGranules(offset, length, (index) => this.setGranule(index, false));
  }

  /** True when any granule that the range touches is dirty. */
  isDirty(offset: number, length: number): boolean {
    let found = false;
    this.forGranules(offset, length, (index) => {
      found ||= this.testGranule(index);
    });
    return found;
  }

  /** True when every granule that the range touches is dirty. */
  isAllDirty(offset: number, length: number): boolean {
    let all = true;
    this.forGranules(offset, length, (index) => {
      all &&= this.testGranule(index);
    });
    return all;
  }

  /**
   * The first run of dirty bytes at or after `offset`, at most `maxLength` long, clipped to the
   * disk; it starts at `offset` or at a granule boundary after it; null when nothing is dirty.
   */
  nextDirty(offset: number, maxLength: number): { offset: number; length: number } | null {
    assert(maxLength > 0, 'nextDirty needs a positive maxLength');
    if (offset >= this.sizeBytes) return null;
    let index = Math.floor(offset / this.granularityBytes);
    while (index < this.granuleCount && !this.testGranule(index)) {
      // Skip whole clean words at once: a mostly clean bitmap is the common case.
      if (index % 32 === 0 && this.words[index / 32] === 0) index += 32;
      else index += 1;
    }
    if (index >= this.granuleCount) return null;
    const start = Math.max(offset, index * this.granularityBytes);
    const limit = Math.min(this.sizeBytes, start + maxLength);
    let end = start;
    while (end < limit) {
      const granule = Math.floor(end / this.granularityBytes);
      if (!this.testGranule(granule)) break;
      end = Math.min(limit, (granule + 1) * this.granularityBytes);
    }
    return { offset: start, length: end - start };
  }

  /** True when nothing is dirty. */
  get isClean(): boolean {
    return this.dirtyGranules === 0;
  }

  /** Marks the whole disk: "nothing is copied yet". */
  markAll(): void {
    this.mark(0, this.sizeBytes);
  }

  /** Clears the whole bitmap. */
  clearAll(): void {
    this.words.fill(0);
    this.dirtyGranules = 0;
  }

  /** An independent copy with the same bits: the start of a pass that forks a successor. */
  clone(): DirtyBitmap {
    const copy = new DirtyBitmap(this.sizeBytes, this.granularityBytes);
    copy.words.set(this.words);
    copy.dirtyGranules = this.dirtyGranules;
    return copy;
  }

  /** A new bitmap dirty where both this and `other` are (same shape): blocks hot in two passes. */
  intersection(other: DirtyBitmap): DirtyBitmap {
    this.checkAlike(other);
    const out = new DirtyBitmap(this.sizeBytes, this.granularityBytes);
    for (let i = 0; i < this.words.length; i += 1) {
      const word = ((this.words[i] ?? 0) & (other.words[i] ?? 0)) >>> 0;
      out.words[i] = word;
      out.dirtyGranules += popcount(word);
    }
    return out;
  }

  /** Clears here every granule dirty in `other` (same shape). */
  subtract(other: DirtyBitmap): void {
    this.checkAlike(other);
    this.dirtyGranules = 0;
    for (let i = 0; i < this.words.length; i += 1) {
      const word = ((this.words[i] ?? 0) & ~(other.words[i] ?? 0)) >>> 0;
      this.words[i] = word;
      this.dirtyGranules += popcount(word);
    }
  }

  /** Marks here everything dirty in `other` (same size and granularity): merging back a failed pass. */
  merge(other: DirtyBitmap): void {
    this.checkAlike(other);
    this.dirtyGranules = 0;
    for (let i = 0; i < this.words.length; i += 1) {
      const word = ((this.words[i] ?? 0) | (other.words[i] ?? 0)) >>> 0;
      this.words[i] = word;
      this.dirtyGranules += popcount(word);
    }
  }

  /**
   * Bytes dirty here or in `other` (same shape), counted without building the union: for a
   * dirty set kept in two bitmaps (dbt's tracker bitmap and the blocks it carries over).
   */
  unionDirtyBytes(other: DirtyBitmap): number {
    this.checkAlike(other);
    let granules = 0;
    for (let i = 0; i < this.words.length; i += 1) {
      granules += popcount(((this.words[i] ?? 0) | (other.words[i] ?? 0)) >>> 0);
    }
    if (granules === 0) return 0;
    const last = this.granuleCount - 1;
    const tailShort = this.granuleCount * this.granularityBytes - this.sizeBytes;
    const isLastDirty = this.testGranule(last) || other.testGranule(last);
    return granules * this.granularityBytes - (isLastDirty ? tailShort : 0);
  }

  private checkAlike(other: DirtyBitmap): void {
    assert(
      other.sizeBytes === this.sizeBytes && other.granularityBytes === this.granularityBytes,
      'bitmaps of different shapes',
    );
  }

  private forGranules(offset: number, length: number, visit: (index: number) => void): void {
    assert(offset >= 0 && length >= 0 && offset + length <= this.sizeBytes, 'bitmap range');
    if (length === 0) return;
    const first = Math.floor(offset / this.granularityBytes);
    const last = Math.floor((offset + length - 1) / this.granularityBytes);
    for (let index = first; index <= last; index += 1) visit(index);
  }

  private testGranule(index: number): boolean {
    return (((this.words[index >>> 5] ?? 0) >>> (index & 31)) & 1) === 1;
  }

  private setGranule(index: number, isDirty: boolean): void {
    const wordIndex = index >>> 5;
    const bit = 1 << (index & 31);
    const word = this.words[wordIndex] ?? 0;
    const wasDirty = (word & bit) !== 0;
    if (wasDirty === isDirty) return;
    this.words[wordIndex] = isDirty ? word | bit : word & ~bit;
    this.dirtyGranules += isDirty ? 1 : -1;
  }
}

function popcount(word: number): number {
  let count = 0;
  for (let bits = word; bits !== 0; bits &= bits - 1) count += 1;
  return count;
}
