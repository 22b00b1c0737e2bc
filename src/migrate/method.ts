import type { BlockDevice } from '../block/device.js';
import type { DirtyBitmap } from '../block/dirty-bitmap.js';
import type { Copier } from './copier.js';
import type { Progress } from './progress.js';

/**
 * What the four methods share (DESIGN.md, "The four methods"). A method keeps a fresh
 * destination in step with a disk the guest keeps writing; the migration runner does the rest:
 * it creates the destination, hands the method a context, and performs the switchover.
 *
 * Lifecycle, driven by the runner:
 *   1. `start(context)` returns a run; nothing has happened yet.
 *   2. `converge()`: the method puts its filter between the guest and the source with
 *      `context.interpose`, copies, and resolves once what is left fits in the switchover.
 *   3. Switchover: the runner pauses the guest's Switch (I/O held and drained) and calls
 *      `finalCopy()`, which makes the target equal to what the guest sees; then flushes the
 *      target, commits, re-points the Switch to the target, and resumes.
 *   Or, on cancel or failure: the runner pauses the Switch, calls `rollback()`, which makes the
 *   source alone hold everything the guest wrote, re-points the Switch to `context.source` and
 *   resumes.
 *   4. `dispose()` in every case, once the Switch no longer points at the method's filter.
 */
export const METHOD_NAMES = ['mirror', 'dbt', 'snapshot', 'sxm'] as const;
export type MethodName = (typeof METHOD_NAMES)[number];
export const METHOD_DEFAULT: MethodName = 'mirror';

/**
 * How guest writes behind the copy cursor reach the destination (issue 7 part 4; vSphere 5.1):
 *   - `sync`: acknowledged once both sides have them (the default for local moves);
 *   - `async`: acknowledged once the source has them, queued for the destination in a bounded
 *     buffer (mirror-queue.ts); a write that finds the buffer full waits for room;
 *   - `auto`: as `async`, but the mirror turns synchronous while the buffer is full or the
 *     destination lags, and asynchronous again once the queue has drained (cross-host default).
 * Every mode is safe: the source is the authority until the commit, and the switchover drains
 * the queue before the destination is flushed.
 */
export const MIRROR_MODES = ['sync', 'async', 'auto'] as const;
export type MirrorMode = (typeof MIRROR_MODES)[number];
export const MIRROR_MODE_DEFAULT: MirrorMode = 'sync';
/** The async mirror's buffer: 64 MiB, vSphere's order of size; `--mirror-buffer` sets it. */
export const ASYNC_BUFFER_BYTES_DEFAULT = 64 * 1024 * 1024;
/**
 * The oldest queued write may wait this long for the destination before `auto` turns
 * synchronous: 1 s. An acknowledged write is safe on the source however long it waits, so the
 * bound is not about safety but about the switchover, which drains the queue with the guest
 * held: a queue a second behind costs about a second of downtime at the link's rate, and a
 * link a second behind is not keeping up with the guest.
 */
export const ASYNC_LAG_MS_MAX_DEFAULT = 1000;

export interface MethodTuning {
  /** The switchover's copy should take at most this long at the measured rate; default 100 ms. */
  readonly downtimeTargetMs: number;
  /** dbt: passes before it gives up converging and switches to mirror; default 8. */
  readonly passMax: number;
  /** dbt: leave blocks dirtied in consecutive passes for the final copy; default true. */
  readonly isHotBlockAvoidance: boolean;
  /** Dirty-tracking and redo-log granule; default 64 KiB. */
  readonly granularityBytes: number;
  /** mirror, sxm and dbt's hand-over: how mirrored writes reach the target; default `sync`. */
  readonly mirrorMode: MirrorMode;
  /** `async`/`auto`: the most the write queue holds, in bytes; default 64 MiB. */
  readonly asyncBufferBytes: number;
  /** `auto`: the oldest queued write's age that turns the mirror synchronous; default 1000. */
  readonly asyncLagMsMax: number;
  /**
   * The bulk copy's window follows the guest's latency (guest-first.ts); default true. Off, the
   * copier keeps its whole window in flight whatever the guest goes through.
   */
  readonly isGuestFirst: boolean;
}

export const METHOD_TUNING_DEFAULT: MethodTuning = {
  downtimeTargetMs: 100,
  passMax: 8,
  isHotBlockAvoidance: true,
  granularityBytes: 64 * 1024,
  mirrorMode: MIRROR_MODE_DEFAULT,
  asyncBufferBytes: ASYNC_BUFFER_BYTES_DEFAULT,
  asyncLagMsMax: ASYNC_LAG_MS_MAX_DEFAULT,
  isGuestFirst: true,
};

/** What a method reports while it runs; the job turns them into events. */
export type MethodEvent =
  | { readonly type: 'phase'; readonly phase: string }
  | { readonly type: 'pass'; readonly pass: number; readonly dirtyBytes: number }
  /**
   * The mirror's write mode (sync: acknowledged after both sides; async: after the source, the
   * destination's copy queued), at the start and on every switch: why, and what the queue held
   * then (`queuedBytes`, as counted against `asyncBufferBytes`).
   */
  | {
      readonly type: 'mode';
      readonly mode: 'sync' | 'async';
      readonly reason: string;
      readonly queuedBytes: number;
    }
  /** The job now runs another method (dbt that cannot converge continues as mirror). */
  | { readonly type: 'method'; readonly method: MethodName; readonly reason: string }
  | { readonly type: 'message'; readonly message: string };

/** A scratch device in the destination datastore (the snapshot method's redo logs). */
export interface Scratch {
  readonly device: BlockDevice;
  /** Closes and deletes it. */
  remove(): Promise<void>;
}

export interface MethodContext {
  /** What the guest's Switch pointed at when the job started: the source disk's stack. */
  readonly source: BlockDevice;
  /**
   * The destination, created empty (reads as zeros), of the source's size. Its writes are
   * tracked in the copier's `touched` bitmap, so the copier knows where it is still fresh.
   */
  readonly target: BlockDevice;
  /** Shared by every pass of the job: speed, window, progress, hole handling. */
  readonly copier: Copier;
  readonly progress: Progress;
  readonly tuning: MethodTuning;
  /** Fires when the job is cancelled; `converge` then rejects with `ERR_CANCELLED`. */
  readonly signal: AbortSignal;
  /**
   * Makes `device` what the guest's I/O goes to: holds guest I/O, waits for it to drain,
   * re-points the Switch to `device`, releases. Brief (no copy happens while held).
   */
  interpose(device: BlockDevice): Promise<void>;
  /**
   * Runs `work` with guest I/O held and drained (for a method whose step must not race the
   * guest, such as starting a fresh redo log), then releases it.
   */
  withGuestHeld<T>(work: () => Promise<T>): Promise<T>;
  /**
   * Marks what the first copy pass must carry in `bitmap` (clean, at the tuning's granularity):
   * everything, or for a resumed move what its persisted state does not vouch for (copy-state.ts).
   */
  markInitial(bitmap: DirtyBitmap): void;
  /** A new empty device of the source's size, in the destination datastore, named for `label`. */
  createScratch(label: string): Promise<Scratch>;
  emit(event: MethodEvent): void;
}

/** What the write queue of a mirroring method did (mirror-queue.ts), for progress and tests. */
export interface MirrorQueueStats {
  readonly mode: 'sync' | 'async';
  /** Guest writes, zeroes and trims acknowledged before the destination had them. */
  readonly asyncWrites: number;
  /** Guest writes acknowledged after both sides had them. */
  readonly syncWrites: number;
  /** Queued bytes a newer write or a copy replaced before they were sent. */
  readonly coalescedBytes: number;
  /** Bytes held now (queued, in flight to the target, reserved). */
  readonly heldBytes: number;
  /** The most held at once: at most the buffer, but for one write larger than all of it. */
  readonly peakHeldBytes: number;
  readonly switchesToSync: number;
  readonly switchesToAsync: number;
}

/**
 * What a mirroring method's filter did: its queue's counts, and how long the guest's writes,
 * zeroes and trims waited for the range lock (for copy chunks or each other; the copier's own
 * acquires are not counted here).
 */
export interface MirrorStats extends MirrorQueueStats {
  /** Guest mutations that took the range lock. */
  readonly lockAcquires: number;
  /** Those that found an overlapping hold and waited. */
  readonly lockWaits: number;
  /** Their waits, summed. */
  readonly lockWaitMs: number;
}

export interface MethodRun {
  /**
   * Bytes the method still has to copy (dirty, or in redo logs, or queued for the destination);
   * for progress displays.
   */
  readonly dirtyBytes: number;
  /** The mirror's write queue, once the method mirrors writes (mirror, sxm, dbt's hand-over). */
  readonly mirrorStats?: MirrorStats | undefined;
  /** Copy passes or consolidation rounds so far. */
  readonly passes: number;
  converge(): Promise<void>;
  /**
   * Optional, for methods that queue mirrored writes: called just before the switchover, with
   * the guest running; mirrors synchronously from then on and resolves once nothing is queued.
   */
  settle?(): Promise<void>;
  finalCopy(): Promise<void>;
  rollback(): Promise<void>;
  dispose(): Promise<void>;
}

export type Method = (context: MethodContext) => MethodRun;
