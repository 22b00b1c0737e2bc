import { assert } from '../util/assert.js';

/**
 * Which parts of a disk have been written since a point in time, at a fixed granularity (a
 * power of two, 64 KiB by default, as QEMU's mirror uses). A write of any size marks every
 * granule it touches, so the bitmap may say more is dirty than was written, never less.
 *
 * Used by the migration methods (DESIGN.md): the copier clears a granule *before* reading it for
 * copy, so a guest write that races the read marks it again (STYLE.md, dirty-tracking rule 1),
 * and re-marks it if the copy fails (rule 2). Memory: one bit per granule, 2 MiB for 1 TiB at
 * 64 KiB. Time: ranges are marked, cleared, tested and searched a 32-bit word at a time, so
 * marking a whole 1 TiB disk or skipping a 1 GiB hole costs words, not granules (issue 9 item 4:
 * granule by granule, one walk of a 1 TiB disk spent about a second in here).
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
    this.forWords(offset, length, (index, mask) => this.setBits(index, mask, true));
  }

  /** Clears every granule that `[offset, offset + length)` touches. */
  clear(offset: number, length: number): void {
    this.forWords(offset, length, (index, mask) => this.setBits(index, mask, false));
  }

  /** True when any granule that the range touches is dirty. */
  isDirty(offset: number, length: number): boolean {
    return !this.forWords(offset, length, (index, mask) => ((this.words[index] ?? 0) & mask) === 0);
  }

  /** True when every granule that the range touches is dirty. */
  isAllDirty(offset: number, length: number): boolean {
    return this.forWords(
      offset,
      length,
      (index, mask) => ((this.words[index] ?? 0) & mask) >>> 0 === mask,
    );
  }

  /**
   * The first run of dirty bytes at or after `offset`, at most `maxLength` long, clipped to the
   * disk; it starts at `offset` or at a granule boundary after it; null when nothing is dirty.
   */
  nextDirty(offset: number, maxLength: number): { offset: number; length: number } | null {
    assert(maxLength > 0, 'nextDirty needs a positive maxLength');
    if (offset >= this.sizeBytes) return null;
    const index = this.findGranule(
      Math.floor(offset / this.granularityBytes),
      true,
      this.granuleCount,
    );
    if (index >= this.granuleCount) return null;
    const start = Math.max(offset, index * this.granularityBytes);
    const limit = Math.min(this.sizeBytes, start + maxLength);
    // The run ends at the first clean granule after it, or at the limit (searched no further).
    const clean = this.findGranule(index + 1, false, Math.ceil(limit / this.granularityBytes));
    return { offset: start, length: Math.min(limit, clean * this.granularityBytes) - start };
  }

  /**
   * The first granule in `[from, until)` that is dirty (`isDirty`) or clean, searched a word at a
   * time; `until` when there is none (`until` is at most `granuleCount`).
   */
  private findGranule(from: number, isDirty: boolean, until: number): number {
    for (let word = from >>> 5; word * 32 < until; word += 1) {
      const raw = this.words[word] ?? 0;
      let bits = (isDirty ? raw : ~raw) >>> 0;
      if (word === from >>> 5) bits = (bits & ~lowMask(from & 31)) >>> 0;
      if (bits !== 0) return Math.min(until, word * 32 + lowestBit(bits));
    }
    return until;
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

  /** The bits as bytes, granule 0 in bit 0 of byte 0 (little-endian words): for persisting. */
  toBytes(): Buffer {
    const bytes = Buffer.alloc(this.words.byteLength);
    for (const [i, word] of this.words.entries()) bytes.writeUInt32LE(word, i * 4);
    return bytes;
  }

  /** A bitmap of this shape from `toBytes()`'s output; fails if the length does not fit. */
  static fromBytes(sizeBytes: number, granularityBytes: number, bytes: Buffer): DirtyBitmap {
    const bitmap = new DirtyBitmap(sizeBytes, granularityBytes);
    assert(bytes.length === bitmap.words.byteLength, 'persisted bitmap of another shape');
    for (let i = 0; i < bitmap.words.length; i += 1) {
      const word = bytes.readUInt32LE(i * 4);
      bitmap.words[i] = word;
      for (let bits = word; bits !== 0; bits &= bits - 1) bitmap.dirtyGranules += 1;
    }
    return bitmap;
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

  /**
   * Calls `visit` for each word the granules of the range fall in, with the mask of those
   * granules' bits in it, while it returns true; false if a visit returned false.
   */
  private forWords(
    offset: number,
    length: number,
    visit: (index: number, mask: number) => boolean,
  ): boolean {
    assert(offset >= 0 && length >= 0 && offset + length <= this.sizeBytes, 'bitmap range');
    if (length === 0) return true;
    const first = Math.floor(offset / this.granularityBytes);
    const last = Math.floor((offset + length - 1) / this.granularityBytes);
    for (let word = first >>> 5; word <= last >>> 5; word += 1) {
      const from = word === first >>> 5 ? first & 31 : 0;
      const to = word === last >>> 5 ? last & 31 : 31;
      const mask = (lowMask(to + 1) & ~lowMask(from)) >>> 0;
      if (visit(word, mask) === false) return false;
    }
    return true;
  }

  /** Sets or clears the bits of `mask` in word `index`; true, to go on to the next word. */
  private setBits(index: number, mask: number, isDirty: boolean): boolean {
    const word = this.words[index] ?? 0;
    const next = (isDirty ? word | mask : word & ~mask) >>> 0;
    if (next === word) return true;
    this.words[index] = next;
    this.dirtyGranules += popcount(next) - popcount(word);
    return true;
  }

  private testGranule(index: number): boolean {
    return (((this.words[index >>> 5] ?? 0) >>> (index & 31)) & 1) === 1;
  }
}

/** The bits below bit `count` (0 to 32) set. */
function lowMask(count: number): number {
  return count >= 32 ? 0xffffffff : ((1 << count) - 1) >>> 0;
}

/** The index of the lowest set bit of a non-zero word. */
function lowestBit(word: number): number {
  return 31 - Math.clz32((word & -word) >>> 0);
}

function popcount(word: number): number {
  let bits = word - ((word >>> 1) & 0x55555555);
  bits = (bits & 0x33333333) + ((bits >>> 2) & 0x33333333);
  return (Math.imul((bits + (bits >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24) & 0xff;
}
