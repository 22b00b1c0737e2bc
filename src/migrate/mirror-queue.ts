/**
 * The async mirror's write queue (issue 7 part 4; vSphere 5.1 Storage vMotion): mirrored guest
 * writes, acknowledged once the source has them, waiting here for the destination. The filters
 * of mirror.ts and sxm.ts put them here; a drainer sends them to the target.
 *
 * Contract (what the methods' invariants rest on):
 *   - Newest bytes win, once: a queued entry not yet sent that a newer write overlaps loses the
 *     overlapped part (dropped, or trimmed to what is left), so the target gets those bytes once,
 *     from the newer write. Queued entries are therefore pairwise disjoint.
 *   - Order where ranges overlap: an entry is sent only when no entry in flight overlaps it, and
 *     entries are sent oldest first, but for those waiting on such an overlap; so a newer write
 *     never lands before an older one it overlaps.
 *   - `supersede(range)` (a synchronous mirrored write, a copy chunk about to read the source)
 *     drops the queued parts in the range and waits for the entries in flight there (and for an
 *     entry it would have to split for less than the split costs): afterwards nothing older
 *     lands in the range. Callers hold the range in their `RangeLock`, as every
 *     enqueuer does, so nothing new enters the range meanwhile. The drainer takes no lock.
 *   - Bounded: held bytes (each write's payload, copied here since the guest's buffer is not
 *     ours once it is acknowledged, plus `ENTRY_OVERHEAD_BYTES` per entry, so zeroes count too)
 *     never pass `bufferBytes`, reservations included, but for one entry larger than the whole
 *     buffer, which is admitted only into an empty queue. At most `inFlightMax` target writes
 *     in flight. Waiters for room are at most the guest's requests in flight.
 *   - A target failure fails the job once (`onFailure`), discards every queued entry (`onLost`
 *     tells the method which ranges the target no longer gets) and closes the queue; the source
 *     has every acknowledged write, since an entry is queued only after its source write.
 *
 * The mode machine (`MirrorMode`):
 *   - `sync`: `reserve` always answers sync; the queue stays empty.
 *   - `async`: `reserve` waits for room when the buffer is full (the guest's write is then
 *     acknowledged only once room was made: backpressure, never unbounded memory); never sync.
 *   - `auto`: starts async; turns sync when a write does not fit (`buffer full`) or the oldest
 *     entry is older than `lagMsMax` (`destination lagging`). Synchronous writes supersede what
 *     they overlap, so they never overtake an older queued entry. It turns async again ('link
 *     has room again') on a write that finds the queue empty once it has been sync for at least
 *     `dwellMs`: `lagMsMax` at first, doubled (up to `DWELL_MAX_MS`) each time async lasted less
 *     than `FLAP_FACTOR` dwells, reset after a longer async stretch; so a link that cannot keep
 *     up spends ever longer stretches synchronous instead of flapping.
 */
import { performance } from 'node:perf_hooks';
import type { BlockDevice } from '../block/device.js';
import { assert } from '../util/assert.js';
import { formatSize } from '../util/size.js';
import type { MethodEvent, MirrorMode, MirrorQueueStats } from './method.js';

/** A mirrored mutation in the form the target gets it (mirrored-writes.ts). */
export type TargetWrite =
  | { readonly kind: 'write'; readonly offset: number; readonly data: Buffer }
  | {
      readonly kind: 'zero';
      readonly offset: number;
      readonly length: number;
      readonly mayTrim: boolean;
    };

/** Performs `write` on `device`. */
export function writeTarget(device: BlockDevice, write: TargetWrite): Promise<void> {
  return write.kind === 'write'
    ? device.write(write.offset, write.data)
    : device.writeZeroes(write.offset, write.length, { mayTrim: write.mayTrim });
}

/** Bytes a target write covers. */
export function targetLength(write: TargetWrite): number {
  return write.kind === 'write' ? write.data.length : write.length;
}

/** What one entry costs besides its payload (the object, its slots): roughly, rounded up. */
export const ENTRY_OVERHEAD_BYTES = 128;
/** Queued entries the drainer looks at past ones that must wait for a write in flight. */
const PUMP_SCAN_MAX = 64;
/**
 * Target writes the drainer keeps in flight. Guest writes are small and scattered, and across
 * hosts each takes a round trip: 8 in flight at 4 ms carry 2000 writes a second, less than one
 * busy guest makes; 64 fill a pooled NBD link (4 connections, the server takes 256 each).
 */
export const QUEUE_IN_FLIGHT_MAX_DEFAULT = 64;
/**
 * The longest a copy chunk waits for queued mirrored writes to go out first: the copy keeps at
 * least one chunk per this many ms of the link, so it finishes even under a guest that writes
 * faster than the link carries (in `async`, whose queue never empties then).
 */
export const COPY_YIELD_MS_MAX = 50;
/** `auto` never stays synchronous longer than this once the queue is empty. */
const DWELL_MAX_MS = 60_000;
/** An async stretch shorter than this many dwells counts as a flap: the next dwell doubles. */
const FLAP_FACTOR = 4;
/**
 * Dead slots the FIFO may carry (sent, or dropped by coalescing) before it is compacted; more
 * when more entries are live.
 */
const FIFO_DEAD_MAX = 1024;

/**
 * Room to reserve for queueing `writes`: each one's payload and entry, and the entry of the tail
 * it may split off an older entry that contains it (one at most: queued entries are disjoint).
 */
export function queueCostOf(writes: readonly TargetWrite[]): number {
  let bytes = 0;
  for (const write of writes)
    bytes += 2 * ENTRY_OVERHEAD_BYTES + (write.kind === 'write' ? write.data.length : 0);
  return bytes;
}

export interface MirrorQueueOptions {
  readonly mode: MirrorMode;
  readonly bufferBytes: number;
  readonly lagMsMax: number;
  readonly inFlightMax?: number;
  readonly emit: (event: MethodEvent) => void;
  /** The first failed target write; called once. */
  readonly onFailure: (reason: unknown) => void;
  /** A range the target will not get from the queue after all (failure or close). */
  readonly onLost: (offset: number, length: number) => void;
}

/** Room held for one guest mutation between the decision and its enqueue. */
export interface Reservation {
  readonly way: 'async';
  readonly bytes: number;
}
/** How to mirror one mutation: queue it (with the room reserved), write it through, or not at all. */
export type Admission = Reservation | { readonly way: 'sync' } | { readonly way: 'closed' };
const SYNC: Admission = { way: 'sync' };
const CLOSED: Admission = { way: 'closed' };

interface Entry {
  offset: number;
  length: number;
  /** The queue's own copy of a write's bytes; undefined for zeros. */
  data: Buffer | undefined;
  readonly mayTrim: boolean;
  readonly enqueuedAtMs: number;
  /** Sent, or dropped by coalescing, while still in the FIFO. */
  isGone: boolean;
  /** Set when sent; settles (never rejects) when its target write settled. */
  settled: Promise<void> | undefined;
}

export class MirrorQueue {
  private readonly target: BlockDevice;
  private readonly options: MirrorQueueOptions;
  private readonly inFlightMax: number;
  /** Queued entries, oldest first, from `fifoHead`; dropped ones are skipped. */
  private fifo: Entry[] = [];
  private fifoHead = 0;
  private fifoDead = 0;
  /** The same live queued entries, by offset (they are disjoint): for overlap lookups. */
  private readonly byOffset: Entry[] = [];
  private readonly inFlight = new Set<Entry>();
  private heldBytesNow = 0;
  private reservedBytes = 0;
  private pendingBytesNow = 0;
  private modeNow: 'sync' | 'async';
  private isClosedNow = false;
  /** `settle` was called: every mutation is synchronous from now on. */
  private isSettling = false;
  private readonly roomWaiters: Array<{ bytes: number; resolve: () => void }> = [];
  private idleWaiters: Array<() => void> = [];
  /** `whenQuiet` callers: woken when nothing waits in the queue. */
  private quietWaiters: Array<() => void> = [];
  /** `supersede` calls waiting for a queued entry to be sent and land; woken on every landing. */
  private landingWaiters: Array<() => void> = [];
  private counts = {
    asyncWrites: 0,
    syncWrites: 0,
    coalescedBytes: 0,
    peakHeldBytes: 0,
    switchesToSync: 0,
    switchesToAsync: 0,
  };
  private dwellMs: number;
  private modeSinceMs = performance.now();

  constructor(target: BlockDevice, options: MirrorQueueOptions) {
    assert(options.bufferBytes > 0 && options.lagMsMax > 0, 'queue bounds are positive');
    this.target = target;
    this.options = options;
    this.inFlightMax = options.inFlightMax ?? QUEUE_IN_FLIGHT_MAX_DEFAULT;
    assert(this.inFlightMax > 0, 'the drainer keeps at least one write in flight');
    this.modeNow = options.mode === 'sync' ? 'sync' : 'async';
    this.dwellMs = options.lagMsMax;
  }

  get mode(): 'sync' | 'async' {
    return this.modeNow;
  }

  /** Bytes held: queued, in flight, reserved (what `bufferBytes` bounds). */
  get heldBytes(): number {
    return this.heldBytesNow + this.reservedBytes;
  }

  /** Bytes of the disk the queue still has to write on the target (queued and in flight). */
  get pendingBytes(): number {
    return this.pendingBytesNow;
  }

  /** After a target failure or `close()`: nothing is queued any more. */
  get isClosed(): boolean {
    return this.isClosedNow;
  }

  get stats(): MirrorQueueStats {
    return { mode: this.modeNow, heldBytes: this.heldBytes, ...this.counts };
  }

  /** Announces the mode the mirror starts in. */
  start(): void {
    const reason =
      this.options.mode === 'auto'
        ? 'mirror mode auto: asynchronous until the destination falls behind'
        : `mirror mode ${this.options.mode}`;
    this.emitMode(reason);
  }

  /**
   * Decides how to mirror a mutation costing `bytes` (`queueCostOf`), steering `auto`: `sync`
   * (write both sides, after `supersede`), `closed` (source only), or a reservation to pass to
   * `enqueue` or `cancel`. In `async` mode it waits for room, first come first served.
   */
  async reserve(bytes: number): Promise<Admission> {
    if (this.isClosedNow) return CLOSED;
    if (this.options.mode === 'sync' || this.isSettling) return this.countSync();
    if (this.options.mode === 'auto') {
      this.steer(bytes);
      return this.modeNow === 'sync' ? this.countSync() : this.take(bytes);
    }
    if (this.roomWaiters.length > 0 || !this.fits(bytes)) {
      // Taken for us by `wakeRoom` in the turn that resolves, so no one slips in between.
      await new Promise<void>((resolve) => this.roomWaiters.push({ bytes, resolve }));
      if (this.isClosedNow) return CLOSED;
      return { way: 'async', bytes };
    }
    return this.take(bytes);
  }

  /** Returns unused room (the source refused the mutation). */
  cancel(reservation: Reservation): void {
    this.reservedBytes -= reservation.bytes;
    this.wakeRoom();
  }

  /**
   * Queues the target forms of one acknowledged-to-be mutation, in order, using `reservation`.
   * Caller: holds their ranges in its lock, and the source has them. On a closed queue the
   * ranges are reported lost (`onLost`) instead, synchronously.
   */
  enqueue(reservation: Reservation, writes: readonly TargetWrite[]): void {
    assert(queueCostOf(writes) <= reservation.bytes, 'a mutation queues at most what it reserved');
    this.reservedBytes -= reservation.bytes;
    if (this.isClosedNow) {
      for (const write of writes) this.options.onLost(write.offset, targetLength(write));
      return;
    }
    const nowMs = performance.now();
    for (const write of writes) {
      const length = targetLength(write);
      this.coalesce(write.offset, length, true);
      const entry: Entry = {
        offset: write.offset,
        length,
        data: write.kind === 'write' ? copyOf(write.data) : undefined,
        mayTrim: write.kind === 'zero' && write.mayTrim,
        enqueuedAtMs: nowMs,
        isGone: false,
        settled: undefined,
      };
      this.fifo.push(entry);
      this.byOffset.splice(this.firstEndingAfter(entry.offset), 0, entry);
      this.heldBytesNow += costOfEntry(entry);
      this.pendingBytesNow += length;
    }
    this.counts.asyncWrites += 1;
    this.compactFifo();
    this.notePeak();
    this.wakeRoom();
    this.pump();
  }

  /**
   * Drops the queued parts of `[offset, offset + length)` and waits for the entries in flight
   * there (see the contract on top). Caller holds the range in its lock.
   */
  async supersede(offset: number, length: number): Promise<void> {
    if (this.byOffset.length > 0) {
      // Splitting an entry adds one; for a range smaller than that, wait for the entry instead,
      // so held bytes never grow without a reservation.
      this.coalesce(offset, length, length >= ENTRY_OVERHEAD_BYTES);
      this.wakeRoom();
      this.checkIdle();
    }
    for (;;) {
      const busy = this.inFlightOver(offset, length);
      if (busy !== undefined) await busy.settled;
      else if (this.queuedOver(offset, length)) await this.nextLanding();
      else return;
    }
  }

  /** True when a queued or in-flight entry overlaps the range. */
  overlaps(offset: number, length: number): boolean {
    return this.queuedOver(offset, length) || this.inFlightOver(offset, length) !== undefined;
  }

  /**
   * Before the switchover, with the guest still running: every later mutation is mirrored
   * synchronously (whatever the mode), and this resolves once everything queued has landed. The
   * queue then only shrinks, so it drains however busy the guest is, and the stun that follows
   * finds nothing queued: the downtime does not pay for the link's backlog.
   */
  async settle(): Promise<void> {
    if (this.isClosedNow) return;
    this.isSettling = true;
    if (this.modeNow === 'async') {
      // Not counted in `switchesToSync`: those say the destination fell behind; this is the end.
      this.modeNow = 'sync';
      this.emitMode('the switchover is next: nothing more is queued');
    }
    await this.drain();
  }

  /**
   * Resolves once nothing waits in the queue (writes in flight may), or after `maxWaitMs`: the
   * copier asks before each chunk, so mirrored writes go out first and never queue behind copy
   * chunks on the link (issue 9), while the copy keeps a share however busy the guest is.
   */
  whenQuiet(maxWaitMs: number): Promise<void> {
    if (this.byOffset.length === 0 || this.isClosedNow) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(done, maxWaitMs);
      this.quietWaiters.push(done);
    });
  }

  /** Resolves once nothing is queued or in flight (the switchover's drain; the guest is held). */
  drain(): Promise<void> {
    if (this.isIdle) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Stops: queued entries are discarded (`onLost`), room waiters released (they then write the
   * source only), and resolves once the writes in flight settled. The job is over (rolled back,
   * failed, or disposed after a drained switchover).
   */
  async close(): Promise<void> {
    if (!this.isClosedNow) {
      this.isClosedNow = true;
      for (let index = this.fifoHead; index < this.fifo.length; index += 1) {
        const entry = this.fifo[index];
        if (entry === undefined || entry.isGone) continue;
        this.heldBytesNow -= costOfEntry(entry);
        this.pendingBytesNow -= entry.length;
        this.options.onLost(entry.offset, entry.length);
      }
      this.fifo = [];
      this.fifoHead = 0;
      this.fifoDead = 0;
      this.byOffset.length = 0;
      for (const waiter of this.roomWaiters.splice(0)) waiter.resolve();
      for (const wake of this.landingWaiters.splice(0)) wake();
    }
    await Promise.all([...this.inFlight].map((entry) => entry.settled));
    this.checkIdle();
  }

  private get isIdle(): boolean {
    return this.byOffset.length === 0 && this.inFlight.size === 0;
  }

  private countSync(): Admission {
    this.counts.syncWrites += 1;
    return SYNC;
  }

  private take(bytes: number): Reservation {
    this.reservedBytes += bytes;
    this.notePeak();
    return { way: 'async', bytes };
  }

  private fits(bytes: number): boolean {
    const held = this.heldBytes;
    return held === 0 || held + bytes <= this.options.bufferBytes;
  }

  /** `auto` only: switches to sync when full or lagging, back to async once drained and dwelt. */
  private steer(bytes: number): void {
    const nowMs = performance.now();
    if (this.modeNow === 'async') {
      const lagMs = this.lagMs(nowMs);
      if (!this.fits(bytes))
        this.switchTo('sync', `buffer full (${formatSize(this.heldBytes)} queued)`, nowMs);
      else if (lagMs > this.options.lagMsMax)
        this.switchTo('sync', `destination lagging ${formatMs(lagMs)}`, nowMs);
      return;
    }
    if (this.isIdle && this.reservedBytes === 0 && nowMs - this.modeSinceMs >= this.dwellMs) {
      this.switchTo('async', 'link has room again', nowMs);
    }
  }

  private switchTo(mode: 'sync' | 'async', reason: string, nowMs: number): void {
    if (mode === 'sync') {
      const wasFlap =
        this.counts.switchesToAsync > 0 && nowMs - this.modeSinceMs < FLAP_FACTOR * this.dwellMs;
      this.dwellMs = wasFlap ? Math.min(DWELL_MAX_MS, this.dwellMs * 2) : this.options.lagMsMax;
      this.counts.switchesToSync += 1;
    } else {
      this.counts.switchesToAsync += 1;
    }
    this.modeNow = mode;
    this.modeSinceMs = nowMs;
    this.emitMode(reason);
  }

  private emitMode(reason: string): void {
    this.options.emit({ type: 'mode', mode: this.modeNow, reason, queuedBytes: this.heldBytes });
  }

  /** Age of the oldest entry queued or in flight; 0 when there is none. */
  private lagMs(nowMs: number): number {
    let oldestMs = nowMs;
    for (const entry of this.inFlight) oldestMs = Math.min(oldestMs, entry.enqueuedAtMs);
    const head = this.peekHead();
    if (head !== undefined) oldestMs = Math.min(oldestMs, head.enqueuedAtMs);
    return nowMs - oldestMs;
  }

  /**
   * Sends the oldest entries while the window has room, passing over (at most `PUMP_SCAN_MAX`)
   * entries that overlap one in flight: queued entries are disjoint, so only those must wait,
   * and one hot block rewritten over a slow link does not hold up the rest.
   */
  private pump(): void {
    if (this.isClosedNow) return;
    let scanned = 0;
    for (let index = this.fifoHead; this.inFlight.size < this.inFlightMax; index += 1) {
      const entry = this.fifo[index];
      if (entry === undefined || scanned >= PUMP_SCAN_MAX) break;
      if (entry.isGone) continue;
      scanned += 1;
      if (this.inFlightOver(entry.offset, entry.length) !== undefined) continue;
      entry.isGone = true;
      this.fifoDead += 1;
      this.send(entry);
    }
    this.peekHead();
    this.compactFifo();
  }

  private send(entry: Entry): void {
    const index = this.byOffset.indexOf(entry, this.firstEndingAfter(entry.offset));
    assert(index >= 0, 'a queued entry is in the offset index');
    this.byOffset.splice(index, 1);
    this.inFlight.add(entry);
    const write: TargetWrite =
      entry.data === undefined
        ? { kind: 'zero', offset: entry.offset, length: entry.length, mayTrim: entry.mayTrim }
        : { kind: 'write', offset: entry.offset, data: entry.data };
    entry.settled = writeTarget(this.target, write).then(
      () => this.landed(entry),
      (error: unknown) => {
        // Closed first, so nothing more is sent to a failed target.
        this.fail(error);
        this.options.onLost(entry.offset, entry.length);
        this.landed(entry);
      },
    );
  }

  private landed(entry: Entry): void {
    this.inFlight.delete(entry);
    this.heldBytesNow -= costOfEntry(entry);
    this.pendingBytesNow -= entry.length;
    entry.data = undefined;
    this.wakeRoom();
    this.pump();
    this.checkIdle();
    for (const wake of this.landingWaiters.splice(0)) wake();
  }

  private nextLanding(): Promise<void> {
    return new Promise((resolve) => this.landingWaiters.push(resolve));
  }

  private queuedOver(offset: number, length: number): boolean {
    const entry = this.byOffset[this.firstEndingAfter(offset)];
    return entry !== undefined && entry.offset < offset + length;
  }

  private fail(reason: unknown): void {
    if (this.isClosedNow) return;
    this.options.onFailure(reason);
    void this.close();
  }

  /** Admits waiters for room, oldest first, taking their room in this turn. */
  private wakeRoom(): void {
    for (;;) {
      const waiter = this.roomWaiters[0];
      if (waiter === undefined || !this.fits(waiter.bytes)) return;
      this.roomWaiters.shift();
      this.take(waiter.bytes);
      waiter.resolve();
    }
  }

  private checkIdle(): void {
    if ((this.byOffset.length === 0 || this.isClosedNow) && this.quietWaiters.length > 0) {
      const quiet = this.quietWaiters;
      this.quietWaiters = [];
      for (const wake of quiet) wake();
    }
    if (!this.isIdle || this.idleWaiters.length === 0) return;
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private notePeak(): void {
    this.counts.peakHeldBytes = Math.max(this.counts.peakHeldBytes, this.heldBytes);
  }

  private peekHead(): Entry | undefined {
    for (;;) {
      const entry = this.fifo[this.fifoHead];
      if (entry === undefined || !entry.isGone) return entry;
      this.fifoHead += 1;
      this.fifoDead -= 1;
    }
  }

  /** Drops what the FIFO has sent or coalesced away, once that is much. */
  private compactFifo(): void {
    // Against the live count too, so compacting stays amortized O(1) per entry.
    if (this.fifoHead + this.fifoDead < Math.max(FIFO_DEAD_MAX, this.byOffset.length)) return;
    this.fifo = this.fifo.slice(this.fifoHead).filter((entry) => !entry.isGone);
    this.fifoHead = 0;
    this.fifoDead = 0;
  }

  private inFlightOver(offset: number, length: number): Entry | undefined {
    const end = offset + length;
    for (const entry of this.inFlight) {
      if (entry.offset < end && offset < entry.offset + entry.length) return entry;
    }
    return undefined;
  }

  /** Index in `byOffset` of the first entry ending after `offset` (entries are disjoint). */
  private firstEndingAfter(offset: number): number {
    let low = 0;
    let high = this.byOffset.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const entry = this.byOffset[middle];
      assert(entry !== undefined, 'index in range');
      if (entry.offset + entry.length <= offset) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /**
   * Removes `[offset, end)` from every queued entry: dropped, trimmed, or (`canSplit`) split in
   * two; without it an entry containing the range is left whole.
   */
  private coalesce(offset: number, length: number, canSplit: boolean): void {
    const end = offset + length;
    let index = this.firstEndingAfter(offset);
    for (let entry = this.byOffset[index]; entry !== undefined && entry.offset < end; ) {
      const entryEnd = entry.offset + entry.length;
      const costBefore = costOfEntry(entry);
      const lengthBefore = entry.length;
      if (offset <= entry.offset && entryEnd <= end) {
        entry.isGone = true;
        entry.data = undefined;
        this.fifoDead += 1;
        this.byOffset.splice(index, 1);
        this.heldBytesNow -= costBefore;
        this.pendingBytesNow -= lengthBefore;
        this.counts.coalescedBytes += lengthBefore;
        entry = this.byOffset[index];
        continue;
      }
      if (entry.offset < offset && end < entryEnd) {
        if (!canSplit) {
          index += 1;
          entry = this.byOffset[index];
          continue;
        }
        const tail = this.split(entry, end);
        this.byOffset.splice(index + 1, 0, tail);
        this.fifo.splice(this.fifo.indexOf(entry, this.fifoHead) + 1, 0, tail);
        this.heldBytesNow += costOfEntry(tail);
        this.pendingBytesNow += tail.length;
      }
      this.trim(entry, Math.max(entry.offset, offset), Math.min(entry.offset + entry.length, end));
      this.heldBytesNow += costOfEntry(entry) - costBefore;
      this.pendingBytesNow += entry.length - lengthBefore;
      index += 1;
      entry = this.byOffset[index];
    }
  }

  /** Cuts `entry` at `at` (inside it): it keeps the head; returns the tail as a new entry. */
  private split(entry: Entry, at: number): Entry {
    const cut = at - entry.offset;
    const tail: Entry = {
      offset: at,
      length: entry.length - cut,
      data: entry.data === undefined ? undefined : copyOf(entry.data.subarray(cut)),
      mayTrim: entry.mayTrim,
      enqueuedAtMs: entry.enqueuedAtMs,
      isGone: false,
      settled: undefined,
    };
    entry.length = cut;
    if (entry.data !== undefined) entry.data = copyOf(entry.data.subarray(0, cut));
    return tail;
  }

  /** Removes `[from, to)`, which touches exactly one end of `entry`, from it. */
  private trim(entry: Entry, from: number, to: number): void {
    const entryEnd = entry.offset + entry.length;
    this.counts.coalescedBytes += to - from;
    if (from === entry.offset) {
      if (entry.data !== undefined) entry.data = copyOf(entry.data.subarray(to - entry.offset));
      entry.offset = to;
      entry.length = entryEnd - to;
    } else {
      assert(to === entryEnd, 'a trim touches one end of the entry');
      if (entry.data !== undefined)
        entry.data = copyOf(entry.data.subarray(0, from - entry.offset));
      entry.length = from - entry.offset;
    }
  }
}

function costOfEntry(entry: Entry): number {
  return ENTRY_OVERHEAD_BYTES + (entry.data?.length ?? 0);
}

/**
 * A copy of `data` in memory of its own: not a slice of Node's shared pool (a small write would
 * otherwise keep an 8 KiB slab alive) nor of a larger buffer, so held bytes are what is held.
 */
function copyOf(data: Buffer): Buffer {
  const copy = Buffer.allocUnsafeSlow(data.length);
  data.copy(copy);
  return copy;
}

function formatMs(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${Math.round(ms)} ms`;
}
