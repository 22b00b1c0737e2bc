import { prng, randomBytes } from './harness.js';

/** What the writer needs of a disk: an `NbdClient` or any `BlockDevice`. */
export interface WritableDisk {
  write(offset: number, data: Buffer): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
}

export type Mutation =
  | { readonly kind: 'write'; readonly offset: number; readonly data: Buffer }
  | { readonly kind: 'zeroes' | 'trim'; readonly offset: number; readonly length: number };

/**
 * A guest for the crash tests: one mutation in flight at a time (so after a crash exactly one
 * range's fate is unknown: `pending`), writes mostly, with zeroes (NBD WRITE_ZEROES) and trims
 * among them, in `[areaStart, areaEnd)`. A trim is recorded as zeros: the disks under test are
 * thin raw files, where a trim punches a hole. The model holds every acknowledged mutation.
 */
export class RecordingWriter {
  pending: Mutation | undefined;
  writes = 0;
  zeroes = 0;
  trims = 0;
  private done: Promise<void> = Promise.resolve();
  private isStopped = true;

  constructor(
    private disk: WritableDisk,
    readonly model: Buffer,
    private readonly area: { readonly start: number; readonly end: number },
  ) {}

  /** Starts (or restarts, on another handle of the disk) the loop with `seed`. */
  start(disk: WritableDisk, seed: number): void {
    this.disk = disk;
    this.isStopped = false;
    this.done = this.loop(prng(seed));
  }

  /** Stops after the mutation in flight; resolves even if the disk went away. */
  async stop(): Promise<void> {
    this.isStopped = true;
    await this.done;
  }

  get mutations(): number {
    return this.writes + this.zeroes + this.trims;
  }

  /** Applies `mutation` to `buffer` (the model, or an expected copy). */
  static apply(buffer: Buffer, mutation: Mutation): void {
    if (mutation.kind === 'write') mutation.data.copy(buffer, mutation.offset);
    else buffer.fill(0, mutation.offset, mutation.offset + mutation.length);
  }

  /**
   * The model, with the one unknown mutation applied where `actual` shows it landed: either
   * outcome is right after a crash.
   */
  expectedFor(actual: Buffer): Buffer {
    const expected = Buffer.from(this.model);
    const pending = this.pending;
    if (pending === undefined) return expected;
    const withPending = Buffer.from(expected);
    RecordingWriter.apply(withPending, pending);
    const length = pending.kind === 'write' ? pending.data.length : pending.length;
    const range = (buffer: Buffer) => buffer.subarray(pending.offset, pending.offset + length);
    return range(actual).equals(range(withPending)) ? withPending : expected;
  }

  private async loop(random: () => number): Promise<void> {
    const { start, end } = this.area;
    while (!this.isStopped) {
      const length = 4096 * (1 + Math.floor(random() * 8));
      const offset = start + 4096 * Math.floor(random() * ((end - start - length) / 4096));
      const dice = random();
      const mutation: Mutation =
        dice < 0.8
          ? { kind: 'write', offset, data: randomBytes(length, random) }
          : { kind: dice < 0.9 ? 'zeroes' : 'trim', offset, length };
      this.pending = mutation;
      try {
        if (mutation.kind === 'write') await this.disk.write(offset, mutation.data);
        else if (mutation.kind === 'zeroes') await this.disk.writeZeroes(offset, length);
        else await this.disk.trim(offset, length);
      } catch {
        return; // the server died: `pending` is the one unknown mutation
      }
      RecordingWriter.apply(this.model, mutation);
      this.pending = undefined;
      if (mutation.kind === 'write') this.writes += 1;
      else if (mutation.kind === 'zeroes') this.zeroes += 1;
      else this.trims += 1;
    }
  }
}
