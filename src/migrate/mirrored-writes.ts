/**
 * What the filters share that put the guest's writes on both sides while a copy runs (the
 * `mirror` and `sxm` methods, and dbt's hand-over to the mirror). The guest's Switch points at
 * such a filter until the switchover; the source is the authority until the commit, so reads,
 * flushes, cache hints, extents, size, caps and limits are the source's.
 *
 * Every write, zero and trim becomes one call of the method's `mutate(mutation)`, which decides
 * the policy alone: which side or sides get the mutation, under which hold, whether the target
 * side is written now or queued (`queue`, mirror-queue.ts), and what that does to the method's
 * bitmap. `mutation.toSource()` performs the guest's own request on `source`; `mutation.target`
 * is its mirrored form for the target:
 *   - write: the same bytes, without FUA (the target's durability is the switchover's flush);
 *   - writeZeroes: zeros, keeping only `mayTrim` (same reason; `fastOnly` is the guest's
 *     question about the source, already answered by the source side);
 *   - trim: zeros that may be trimmed (see `trim`).
 * In async mode the target form is queued only once the source has the mutation, and the queue
 * copies a write's bytes (the guest's buffer is not ours once it is acknowledged).
 *
 * A failed target side (written now, or sent from the queue) fails the job, once, with
 * `ERR_TARGET_FAILED` (`failTarget`): `failed` rejects and `targetFailure` is set, the queue
 * closes, and from then on each method sends writes to the source only, so a broken destination
 * never fails or slows the guest.
 */
import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from '../block/device.js';
import { LockWaits } from '../block/range-lock.js';
import { errorMessageOf } from '../util/errors.js';
import { MigrateError, MigrateErrorCode } from './errors.js';
import type { MethodEvent, MethodTuning, MirrorStats } from './method.js';
import { MirrorQueue, type TargetWrite } from './mirror-queue.js';

/** One guest mutation: the guest's request on the source, and its mirrored form for the target. */
export interface GuestMutation {
  readonly offset: number;
  readonly length: number;
  toSource(): Promise<void>;
  readonly target: TargetWrite;
}

/** What a filter's queue is built from: the job's tuning and its event sink. */
export interface MirrorQueueSetup {
  readonly tuning: MethodTuning;
  readonly emit: (event: MethodEvent) => void;
}

export abstract class MirroredWriteFilter implements BlockDevice {
  /** Rejects with the first target failure and never resolves: race it with the copy. */
  readonly failed: Promise<never>;
  /** The target writes acknowledged ahead of the target, and the mode machine. */
  readonly queue: MirrorQueue;
  /** The guest's acquires of the method's range lock (`mutate` passes it to `acquire`). */
  protected readonly lockWaits = new LockWaits();
  protected readonly source: BlockDevice;
  protected readonly target: BlockDevice;
  private failure: MigrateError | undefined;
  private rejectFailed!: (error: MigrateError) => void;

  constructor(source: BlockDevice, target: BlockDevice, setup: MirrorQueueSetup) {
    this.source = source;
    this.target = target;
    this.failed = new Promise<never>((_resolve, reject) => {
      this.rejectFailed = reject;
    });
    // Nobody may be racing it when the target fails; the run asks `throwIfTargetFailed` then.
    this.failed.catch(() => undefined);
    this.queue = new MirrorQueue(target, {
      mode: setup.tuning.mirrorMode,
      bufferBytes: setup.tuning.asyncBufferBytes,
      lagMsMax: setup.tuning.asyncLagMsMax,
      emit: setup.emit,
      onFailure: (reason) => this.failTarget(reason),
      onLost: (offset, length) => this.forget(offset, length),
    });
  }

  /** Set once a target write failed; then every write goes to the source only. */
  get targetFailure(): MigrateError | undefined {
    return this.failure;
  }

  /** The queue's counts and the guest's waits for the range lock. */
  get stats(): MirrorStats {
    const { acquires, waits, waitMs } = this.lockWaits;
    return { ...this.queue.stats, lockAcquires: acquires, lockWaits: waits, lockWaitMs: waitMs };
  }

  /** The target gets nothing more from the guest: it failed, or the job is being undone. */
  get isSourceOnly(): boolean {
    return this.failure !== undefined || this.queue.isClosed;
  }

  get size(): number {
    return this.source.size;
  }

  get caps(): BlockCaps {
    return this.source.caps;
  }

  get limits(): BlockLimits {
    return this.source.limits;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.source.read(offset, length);
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.mutate({
      offset,
      length: data.length,
      toSource: () => this.source.write(offset, data, options),
      target: { kind: 'write', offset, data },
    });
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    const mayTrim = options?.mayTrim ?? false;
    return this.mutate({
      offset,
      length,
      toSource: () => this.source.writeZeroes(offset, length, options),
      target: { kind: 'zero', offset, length, mayTrim },
    });
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    // The target's trim may leave anything there, so the mirrored form is a zero: the target
    // must read as the source does, and a trimmed source range reads as zeros on our backends.
    return this.mutate({
      offset,
      length,
      toSource: () => this.source.trim(offset, length, options),
      target: { kind: 'zero', offset, length, mayTrim: true },
    });
  }

  /** Durability of the target is the switchover's flush; the guest's flush is the source's. */
  flush(): Promise<void> {
    return this.source.flush();
  }

  cache(offset: number, length: number): Promise<void> {
    return this.source.cache(offset, length);
  }

  extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    return this.source.extents(offset, length, runsMax);
  }

  /** The filter owns the source below it, as every filter in a stack does; not the target. */
  close(): Promise<void> {
    return this.source.close();
  }

  /** Throws the target failure, if there was one. */
  throwIfTargetFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }

  /**
   * Applies one guest mutation by the method's policy; settles once every side it applied to
   * has settled (or, async, once the source has it and its target form is queued), and rejects
   * with the source's error if the source refused it.
   */
  protected abstract mutate(mutation: GuestMutation): Promise<void>;

  /** The target will not get this range from the queue after all: the method copies it again. */
  protected abstract forget(offset: number, length: number): void;

  /** Records the first failed target side as the job's failure; later ones add nothing. */
  protected failTarget(reason: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = new MigrateError(
      MigrateErrorCode.TargetFailed,
      `a mirrored write to the destination failed: ${errorMessageOf(reason)}`,
      { cause: reason },
    );
    this.rejectFailed(this.failure);
  }
}
