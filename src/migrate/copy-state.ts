import { DirtyBitmap } from '../block/dirty-bitmap.js';
import { assert } from '../util/assert.js';

/**
 * What of a move's destination holds a copy that matches its source, kept so that a move a crash
 * interrupted resumes instead of starting over (issue 10). Two bitmaps, persisted together by the
 * host (`persist`, one atomic file write) in the spirit of Linux md's write-intent bitmap:
 *
 * - `copied`, per copy granule: the destination holds the source's bytes there, flushed.
 * - `intent`, per coarse region: a guest write may have gone to the region since its bit was
 *   persisted, so the two sides may differ there whatever `copied` says.
 *
 * Invariant (what resume relies on): for every region r, in the last persisted file, either
 * `intent[r]`, or every granule of r marked `copied` holds on the destination what the source
 * holds. At resume: to copy = not copied ∪ intent. Kept by three rules:
 *
 * 1. A guest write (data, zeroes, trim) to r waits, before it reaches any device, until a persist
 *    that includes `intent[r]` completed (`beforeWrite`). Only the first write to r after a
 *    checkpoint pays for it; later ones find the bit durable and go straight on: no sync per write.
 * 2. A granule becomes `copied` only from a copy of the source whose run started with no guest
 *    write in flight in its regions and saw none start before it landed (`copyStarting` /
 *    `copyLanded`), and only after the destination was flushed (`checkpoint`).
 * 3. `checkpoint` clears the intent of a region with no write in flight and none started since
 *    the checkpoint before (idle for a whole interval, as md clears its bits only after a delay:
 *    a region the guest keeps writing keeps its bit and costs no more persists), and with it the
 *    region's `copied` granules, in the same persisted write: what a write changed is copied again on
 *    resume unless a later valid copy (rule 2) carries it. The methods' own convergence (dbt's
 *    dirty passes, the mirror's second write, a redo log) is not trusted here: that costs a
 *    re-copy of the regions written during the move, and makes the rule the same for all four.
 *
 * Writes that reach the source before the filter is in the guest's path are harmless: nothing is
 * `copied` before `startTracking`.
 *
 * A fresh state (`CopyState.fresh`) starts with the intent set on every region, in the file the
 * move writes before it begins: the guest's first write to each region then finds its intent
 * durable instead of waiting for a persist. With a random writer that was a hundred persists in
 * a row, each fsyncs on a busy datastore, and a synchronous mirror's guest lost a quarter of its
 * IOPS over a whole 1 GiB move (bench/cross-host.ts). Rule 3 clears the intent of the regions the
 * guest leaves alone at the first checkpoint; their `copied` granules stay, since no write went
 * there under that intent (`written`).
 */
export interface CopyStateShape {
  readonly sizeBytes: number;
  /** The copier's granule: every copy run is whole granules of it. */
  readonly copiedGranuleBytes: number;
  /**
   * The granule `copied` is persisted at (a multiple of `copiedGranuleBytes`): a saved granule is
   * set only where every granule in it is. Coarse enough that the file stays small.
   */
  readonly savedGranuleBytes: number;
  /** The write-intent region: coarse, so its persist is rare. */
  readonly intentRegionBytes: number;
}

export interface CopyStateBits {
  readonly copied: Buffer;
  readonly intent: Buffer;
}

/** At least 1 MiB, and at most 4096 regions per disk (512 bytes of intent bits). */
export function intentRegionBytesFor(sizeBytes: number): number {
  let region = 1024 * 1024;
  while (sizeBytes / region > 4096) region *= 2;
  return region;
}

/** At most 65536 saved `copied` bits per disk (8 KiB; 16 MiB granules for 1 TiB). */
export function savedGranuleBytesFor(sizeBytes: number, copiedGranuleBytes: number): number {
  let granule = copiedGranuleBytes;
  while (sizeBytes / granule > 65536) granule *= 2;
  return granule;
}

/** A copy run's view of its regions when it started; `null` when it cannot count (rule 2). */
export interface CopyToken {
  readonly offset: number;
  readonly length: number;
  readonly starts: Uint32Array | null;
}

export class CopyState {
  readonly shape: CopyStateShape;
  /** Counts for the report and tests: persists made, and guest writes that waited for one. */
  persists = 0;
  writesWaited = 0;
  private readonly copied: DirtyBitmap;
  private readonly intent: DirtyBitmap;
  /**
   * Per region, 1 when its intent is set and the last completed persist wrote it set with the
   * same `intentGens` (no clear since): a write there needs no persist (rule 1's fast path).
   */
  private readonly ready: Uint8Array;
  /** Per region, bumped whenever its intent bit changes: tells a persist's bits from later ones. */
  private readonly intentGens: Uint32Array;
  /** What each `encode` produced, by its id, until the persist that wrote it completes. */
  private readonly encodings = new Map<number, { intent: DirtyBitmap; gens: Uint32Array }>();
  /** The id of the last `encode`. */
  lastEncodeId = 0;
  /** Copies landed since the last checkpoint: not flushed yet, so not `copied`. */
  private landed: DirtyBitmap;
  private readonly writesStarted: Uint32Array;
  private readonly inFlight: Uint32Array;
  /** `writesStarted` at the last checkpoint: a region is idle if it has not moved since. */
  private writesAtCheckpoint: Uint32Array;
  /**
   * Per region, 1 once a guest write may have gone there under its current intent: its `copied`
   * granules are then cleared with the intent (rule 3). A set-ahead intent that saw no write
   * clears alone.
   */
  private readonly written: Uint8Array;
  private isTracking = false;
  private running: Promise<void> = Promise.resolve();
  private queued: Promise<void> | undefined;

  /**
   * A state for a move that starts: nothing copied, the intent set everywhere (see above). The
   * caller makes these bits durable before the state is used, as for a loaded one.
   */
  static fresh(shape: CopyStateShape, persist: () => Promise<number>): CopyState {
    const intent = new DirtyBitmap(shape.sizeBytes, shape.intentRegionBytes);
    intent.markAll();
    const copied = new DirtyBitmap(shape.sizeBytes, shape.savedGranuleBytes);
    return new CopyState(
      shape,
      persist,
      { copied: copied.toBytes(), intent: intent.toBytes() },
      { isFresh: true },
    );
  }

  constructor(
    shape: CopyStateShape,
    /** Writes `encode()`'s bits durably; resolves with the `lastEncodeId` it wrote. */
    private readonly persist: () => Promise<number>,
    loaded?: CopyStateBits,
    /** `loaded` is a fresh state's set-ahead intent: no write went there yet. */
    options: { readonly isFresh?: boolean } = {},
  ) {
    this.shape = shape;
    const { sizeBytes, copiedGranuleBytes, savedGranuleBytes, intentRegionBytes } = shape;
    assert(intentRegionBytes % copiedGranuleBytes === 0, 'an intent region is whole granules');
    assert(savedGranuleBytes % copiedGranuleBytes === 0, 'a saved granule is whole granules');
    this.copied = new DirtyBitmap(sizeBytes, copiedGranuleBytes);
    if (loaded !== undefined) {
      const saved = DirtyBitmap.fromBytes(sizeBytes, savedGranuleBytes, loaded.copied);
      forRuns(saved, (offset, length) => this.copied.mark(offset, length));
    }
    this.intent =
      loaded === undefined
        ? new DirtyBitmap(sizeBytes, intentRegionBytes)
        : DirtyBitmap.fromBytes(sizeBytes, intentRegionBytes, loaded.intent);
    this.landed = new DirtyBitmap(sizeBytes, copiedGranuleBytes);
    const regions = Math.ceil(sizeBytes / intentRegionBytes);
    this.writesStarted = new Uint32Array(regions);
    this.inFlight = new Uint32Array(regions);
    this.writesAtCheckpoint = new Uint32Array(regions);
    this.ready = new Uint8Array(regions);
    this.intentGens = new Uint32Array(regions);
    this.written = new Uint8Array(regions);
    const isFresh = options.isFresh === true;
    // A loaded intent is in the file already; one read back after a crash may have seen writes.
    for (let r = 0; r < regions; r += 1) {
      if (!this.intent.isDirty(r * intentRegionBytes, 1)) continue;
      this.ready[r] = 1;
      if (!isFresh) this.written[r] = 1;
    }
    // A state read back after a crash already tracks: the file says what it says.
    this.isTracking = loaded !== undefined && !isFresh;
  }

  /** The bits to persist, as they are now. */
  encode(): CopyStateBits {
    const granule = this.shape.savedGranuleBytes;
    const saved = new DirtyBitmap(this.shape.sizeBytes, granule);
    forRuns(this.copied, (offset, length) => {
      // The saved granules the run covers whole (runs are maximal: the disk's end closes one).
      const start = Math.ceil(offset / granule) * granule;
      const end = offset + length;
      const wholeEnd = end === this.shape.sizeBytes ? end : Math.floor(end / granule) * granule;
      if (wholeEnd > start) saved.mark(start, wholeEnd - start);
    });
    this.lastEncodeId += 1;
    this.encodings.set(this.lastEncodeId, {
      intent: this.intent.clone(),
      gens: this.intentGens.slice(),
    });
    return { copied: saved.toBytes(), intent: this.intent.toBytes() };
  }

  /** Bytes the destination holds, per the state (copied and not under intent). */
  get copiedBytes(): number {
    return this.shape.sizeBytes - this.toCopy(this.shape.copiedGranuleBytes).dirtyBytes;
  }

  /** From here on copies may count (the intent filter is in the guest's path). */
  startTracking(): void {
    this.isTracking = true;
  }

  /**
   * Rule 1. Counts the write as in flight in its regions (the caller calls `afterWrite` in
   * every case); returns undefined when every region's intent is durable, else a promise that
   * settles once it is (rejects if the persist failed: the write must not go on).
   */
  beforeWrite(offset: number, length: number): Promise<void> | undefined {
    if (length === 0) return undefined;
    const region = this.shape.intentRegionBytes;
    let isDurable = true;
    for (let r = Math.floor(offset / region); r * region < offset + length; r += 1) {
      this.writesStarted[r] = ((this.writesStarted[r] ?? 0) + 1) >>> 0;
      this.inFlight[r] = (this.inFlight[r] ?? 0) + 1;
      this.written[r] = 1;
      if (this.ready[r] === 1) continue;
      isDurable = false;
      const at = r * region;
      if (!this.intent.isDirty(at, 1)) {
        this.intent.mark(at, 1);
        this.intentGens[r] = ((this.intentGens[r] ?? 0) + 1) >>> 0;
      }
    }
    if (isDurable) return undefined;
    this.writesWaited += 1;
    return this.persistSoon();
  }

  afterWrite(offset: number, length: number): void {
    if (length === 0) return;
    const region = this.shape.intentRegionBytes;
    for (let r = Math.floor(offset / region); r * region < offset + length; r += 1) {
      assert((this.inFlight[r] ?? 0) > 0, 'afterWrite without beforeWrite');
      this.inFlight[r] = (this.inFlight[r] ?? 0) - 1;
    }
  }

  /** Rule 2: a copy run of the source is about to clear its bits and read. */
  copyStarting(offset: number, length: number): CopyToken {
    const { first, last } = this.regionsOf(offset, length);
    let isQuiet = this.isTracking;
    for (let r = first; r <= last && isQuiet; r += 1) isQuiet = this.inFlight[r] === 0;
    const starts = isQuiet ? this.writesStarted.slice(first, last + 1) : null;
    return { offset, length, starts };
  }

  /** Rule 2: the run's data is on the destination (not flushed yet). */
  copyLanded(token: CopyToken): void {
    const { starts, offset, length } = token;
    if (starts === null) return;
    const { first, last } = this.regionsOf(offset, length);
    for (let r = first; r <= last; r += 1) {
      if (this.inFlight[r] !== 0 || this.writesStarted[r] !== starts[r - first]) return;
    }
    // Only whole granules: a run of a finer pass marks none it covers in part.
    const granule = this.shape.copiedGranuleBytes;
    const start = Math.ceil(offset / granule) * granule;
    const end =
      offset + length === this.shape.sizeBytes
        ? offset + length
        : Math.floor((offset + length) / granule) * granule;
    if (end > start) this.landed.mark(start, end - start);
  }

  /**
   * Rules 2 and 3: flushes the destination (`flushTarget`), then counts what had landed before
   * the flush as copied, clears the intent (and the copied granules) of every region idle since
   * the last checkpoint, and persists. Callers run one at a time.
   */
  async checkpoint(flushTarget: () => Promise<void>): Promise<void> {
    const landed = this.landed;
    this.landed = new DirtyBitmap(this.shape.sizeBytes, this.shape.copiedGranuleBytes);
    try {
      await flushTarget();
    } catch (error) {
      this.landed.merge(landed);
      throw error;
    }
    this.copied.merge(landed);
    const region = this.shape.intentRegionBytes;
    for (let run = this.intent.nextDirty(0, this.shape.sizeBytes); run !== null; ) {
      const end = run.offset + run.length;
      for (let at = run.offset; at < end; at += region) {
        const r = at / region;
        if (this.inFlight[r] !== 0 || this.writesStarted[r] !== this.writesAtCheckpoint[r])
          continue;
        const length = Math.min(region, this.shape.sizeBytes - at);
        this.intent.clear(at, length);
        this.ready[r] = 0;
        this.intentGens[r] = ((this.intentGens[r] ?? 0) + 1) >>> 0;
        if (this.written[r] === 1) this.copied.clear(at, length);
        this.written[r] = 0;
      }
      run = end >= this.shape.sizeBytes ? null : this.intent.nextDirty(end, this.shape.sizeBytes);
    }
    this.writesAtCheckpoint = this.writesStarted.slice();
    await this.persistSoon();
  }

  /** What a resumed copy must carry, at `granularityBytes`: not copied ∪ intent. */
  toCopy(granularityBytes: number): DirtyBitmap {
    const { sizeBytes, copiedGranuleBytes } = this.shape;
    assert(copiedGranuleBytes % granularityBytes === 0, 'resume granule divides the copy granule');
    const bitmap = new DirtyBitmap(sizeBytes, granularityBytes);
    bitmap.markAll();
    forRuns(this.copied, (offset, length) => bitmap.clear(offset, length));
    forRuns(this.intent, (offset, length) => bitmap.mark(offset, length));
    return bitmap;
  }

  /** One persist after every call before it started; concurrent callers share it. */
  private persistSoon(): Promise<void> {
    if (this.queued !== undefined) return this.queued;
    const queued = this.running
      .catch(() => undefined)
      .then(async () => {
        this.queued = undefined;
        const id = await this.persist();
        this.persists += 1;
        this.persisted(id);
      });
    this.queued = queued;
    this.running = queued;
    return queued;
  }

  /**
   * The persist that wrote encoding `id` completed (persists complete in order): a region is
   * ready where that encoding had its intent set and nothing changed the bit since.
   */
  private persisted(id: number): void {
    const written = this.encodings.get(id);
    assert(written !== undefined, `persist of unknown encoding ${id}`);
    for (const older of this.encodings.keys()) if (older <= id) this.encodings.delete(older);
    const region = this.shape.intentRegionBytes;
    for (let r = 0; r < this.ready.length; r += 1) {
      const isWritten =
        written.intent.isDirty(r * region, 1) && written.gens[r] === this.intentGens[r];
      this.ready[r] = isWritten ? 1 : 0;
    }
  }

  private regionsOf(offset: number, length: number): { first: number; last: number } {
    const region = this.shape.intentRegionBytes;
    return {
      first: Math.floor(offset / region),
      last: Math.floor((offset + Math.max(1, length) - 1) / region),
    };
  }
}

function forRuns(bitmap: DirtyBitmap, each: (offset: number, length: number) => void): void {
  for (let run = bitmap.nextDirty(0, bitmap.sizeBytes); run !== null; ) {
    each(run.offset, run.length);
    const end = run.offset + run.length;
    run = end >= bitmap.sizeBytes ? null : bitmap.nextDirty(end, bitmap.sizeBytes);
  }
}
