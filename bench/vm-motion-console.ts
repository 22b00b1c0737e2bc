import { open } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  GUEST_BLOCK_BYTES,
  type GuestLog,
  parseGuestLog,
  verifyDisk,
} from '../test/guest/guest-log.js';

/**
 * The guest's serial console seen from the host, for the VM motion benchmark (issue 8): every
 * line the recording guest (test/guest/init.sh, `ferry.guest=writer`) prints, stamped with the
 * host's monotonic clock (`monotonicMs`) when it was first seen. The feeds here (a socket
 * chardev, a polled file) run in the console stamper (vm-motion-stamper.ts), a process of its
 * own at a higher priority, so a busy bench process does not make the stamps late. The guest's own
 * clock is no use for its pause: a TCG guest's clock stops while it is paused.
 *
 * Two sides feed one recorder: the source QEMU's console and the destination's. A guest line is
 * kept once, at its first sighting, with the side that showed it. Every guest line is unique
 * (`tick N` and `ack N` count up, the boot id is random), so a line shown twice (a Ferry VM's
 * console log is copied with its home to the destination at the start of the move, then the
 * destination QEMU appends to it) keeps the time the source printed it.
 *
 * Contract of the timestamps: a line's time is when its last byte reached the stamper, so it is
 * late by at most the feed's resolution: a socket chardev's data event (the stamper's event loop
 * delay, which `LoopDelay` measures), or a file's poll period (`tailFile` measures its own).
 *
 * Lines that are not the guest's (kernel messages, a line cut by the switchover: its head on the
 * source, its tail on the destination) are dropped; the acks they cost are counted and rebuilt
 * from the ones around them (`reconstructGuestLog`).
 */

export type ConsoleSide = 'source' | 'destination';

export interface ConsoleLine {
  readonly text: string;
  /** `monotonicMs()` when the line's last byte arrived. */
  readonly atMs: number;
  readonly side: ConsoleSide;
}

/** The recording guest's lines (guest-log.ts parses them); nothing else is timed. */
const GUEST_LINE = /^(tick \d+ \d+|ack \d+ \d+|check \d+ ok|ferry-guest .+|bad .+|error .+)$/;
const ACK_LINE = /^ack (\d+) \d+$/;
const GUEST_LINE_START = /(tick|ack|check|ferry-guest|bad|error) /g;
/** A line longer than this is garbage (a cut line glued to the next); it is dropped. */
const LINE_MAX_CHARS = 4096;

export class ConsoleRecorder {
  /** First sightings of guest lines, in arrival order. */
  readonly lines: ConsoleLine[] = [];
  private readonly seen = new Set<string>();
  private readonly partial: Record<ConsoleSide, string> = { source: '', destination: '' };
  private readonly bytes: Record<ConsoleSide, number> = { source: 0, destination: 0 };

  /** Takes the next bytes of one side's console, which arrived at `atMs`. */
  feed(side: ConsoleSide, chunk: string, atMs: number): void {
    this.bytes[side] += chunk.length;
    const text = this.partial[side] + chunk;
    const parts = text.split('\n');
    const tail = parts.pop() ?? '';
    this.partial[side] = tail.length > LINE_MAX_CHARS ? '' : tail;
    for (const part of parts) {
      const line = guestLineIn(part.replace(/\r$/, ''));
      if (line === undefined || this.seen.has(line)) continue;
      this.seen.add(line);
      this.lines.push({ text: line, atMs, side });
    }
  }

  /** Bytes each side has fed so far. */
  bytesFrom(side: ConsoleSide): number {
    return this.bytes[side];
  }

  /** Resolves once `isDone(lines)` holds; rejects after `timeoutMs` or when `failed()` names a cause. */
  async waitFor(
    what: string,
    isDone: (lines: readonly ConsoleLine[]) => boolean,
    timeoutMs: number,
    failed: () => string | undefined = () => undefined,
  ): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      if (isDone(this.lines)) return;
      const cause = failed();
      if (cause !== undefined) throw new Error(`${what}: ${cause}`);
      if (performance.now() > deadline) {
        const last = this.lines.slice(-3).map((line) => line.text);
        throw new Error(`${what}: not within ${timeoutMs} ms; last lines: ${last.join(' | ')}`);
      }
      await sleep(20);
    }
  }
}

/**
 * The guest line `text` is, or ends with: a Ferry VM's console copied with its home may end in
 * the head of a line, and the destination's first line is then glued to it. Undefined if none.
 */
function guestLineIn(text: string): string | undefined {
  if (GUEST_LINE.test(text)) return text;
  let start = -1;
  for (const match of text.matchAll(GUEST_LINE_START)) start = match.index;
  if (start <= 0) return undefined;
  const tail = text.slice(start);
  return GUEST_LINE.test(tail) ? tail : undefined;
}

/** The number of `ack` lines among `lines`. */
export function ackCount(lines: readonly ConsoleLine[]): number {
  return lines.filter((line) => ACK_LINE.test(line.text)).length;
}

/**
 * The clock of every stamp and instant of the benchmark: CLOCK_MONOTONIC in ms (libuv's hrtime),
 * the same in every process of the machine, so the console stamper (vm-motion-stamper.ts) and
 * the flows it is compared with read one clock.
 */
export function monotonicMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

/** Where a feed delivers what it read: a side's next bytes, and when they arrived. */
export type ConsoleSink = (side: ConsoleSide, chunk: string, atMs: number) => void;

export interface ConsoleFeed {
  /** How late one line's time can be, as measured. */
  resolution(): string;
  close(): Promise<void>;
}

const CONNECT_RETRY_MS = 10;

/**
 * Reads a QEMU socket chardev (`-chardev socket,path=P,server=on,wait=off`) into `sink` as
 * `side`, each chunk stamped on arrival. Connect before the guest prints: with no client, QEMU
 * drops the serial output. Retries while QEMU has not made the socket yet.
 */
export async function readSocketConsole(
  path: string,
  side: ConsoleSide,
  sink: ConsoleSink,
  timeoutMs: number,
): Promise<ConsoleFeed> {
  const deadline = performance.now() + timeoutMs;
  let socket: Socket;
  for (;;) {
    try {
      socket = await new Promise<Socket>((resolve, reject) => {
        const attempt = connect({ path });
        attempt.once('connect', () => {
          attempt.off('error', reject);
          resolve(attempt);
        });
        attempt.once('error', reject);
      });
      break;
    } catch (error) {
      if (performance.now() > deadline) {
        throw new Error(`no console socket at ${path} within ${timeoutMs} ms`, { cause: error });
      }
      await sleep(CONNECT_RETRY_MS);
    }
  }
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => sink(side, chunk, monotonicMs()));
  // QEMU going away ends the stream; that is how every run ends, not an error.
  socket.on('error', () => undefined);
  return {
    resolution: () => 'socket chardev, stamped on arrival',
    close: async () => {
      socket.destroy();
    },
  };
}

/**
 * Follows a file QEMU appends the console to (a Ferry VM's `console.log`), polling every
 * `pollMs`: the first of `paths` that exists is opened and read from there on as it grows. The
 * descriptor stays open, so a rename of the home (`.vm.home-move/` to `vm/`) or its deletion at
 * the source after the move does not lose what follows; a different file appearing at one of
 * `paths` later (a new inode) is opened too, from its start (lines seen already are ignored).
 * The resolution it reports is the median time between two reads, and the 99th percentile.
 */
export function tailFile(
  paths: readonly string[],
  side: ConsoleSide,
  sink: ConsoleSink,
  pollMs: number,
): ConsoleFeed {
  let isClosed = false;
  const periods: number[] = [];
  const opened = new Map<number, { handle: Awaited<ReturnType<typeof open>>; at: number }>();
  const buffer = Buffer.allocUnsafe(256 * 1024);
  const poll = async (): Promise<void> => {
    for (const path of paths) {
      let handle: Awaited<ReturnType<typeof open>>;
      try {
        handle = await open(path, 'r');
      } catch {
        continue; // Not there (yet, or any more).
      }
      const { ino } = await handle.stat();
      if (opened.has(ino)) await handle.close();
      else opened.set(ino, { handle, at: 0 });
    }
    for (const file of opened.values()) {
      for (;;) {
        const { bytesRead } = await file.handle.read(buffer, 0, buffer.length, file.at);
        if (bytesRead === 0) break;
        file.at += bytesRead;
        sink(side, buffer.toString('latin1', 0, bytesRead), monotonicMs());
      }
    }
  };
  const loop = (async () => {
    let lastMs = performance.now();
    while (!isClosed) {
      await poll();
      await sleep(pollMs);
      const nowMs = performance.now();
      periods.push(nowMs - lastMs);
      lastMs = nowMs;
    }
  })();
  return {
    resolution: () => {
      const sorted = [...periods].sort((a, b) => a - b);
      const at = (q: number): number => sorted[Math.floor(q * (sorted.length - 1))] ?? Number.NaN;
      return `${side} file polled every ${pollMs} ms: median ${at(0.5).toFixed(1)} ms, p99 ${at(0.99).toFixed(1)} ms between reads`;
    },
    close: async () => {
      isClosed = true;
      await loop;
      // One last read: what QEMU wrote before it stopped.
      await poll();
      for (const file of opened.values()) await file.handle.close();
    },
  };
}

/** The event loop's delay in the process that stamps: what a stamp can be late by, besides the feed's own resolution. */
export class LoopDelay {
  private readonly histogram = monitorEventLoopDelay({ resolution: 1 });

  start(): void {
    this.histogram.reset();
    this.histogram.enable();
  }

  stop(): { readonly p99Ms: number; readonly maxMs: number } {
    this.histogram.disable();
    return {
      p99Ms: this.histogram.percentile(99) / 1e6,
      maxMs: this.histogram.max / 1e6,
    };
  }
}

/** The instants of one move that the console figures are cut at (`monotonicMs()`). */
export interface MoveInstants {
  /** Start of the window of guest I/O before the move. */
  readonly beforeMs: number;
  /** The move starts (the first step of it). */
  readonly startMs: number;
  /** The guest runs at the destination (as the flow knows it). */
  readonly runningMs: number;
  /** End of the window watched after the move. */
  readonly endMs: number;
}

export interface ConsoleFigures {
  /**
   * The pause at the switchover as the guest's output shows it: from the last line the source
   * printed to the first line the destination printed.
   */
  readonly switchoverGapMs: number;
  /** The largest gap between consecutive lines from the move's start to the window's end. */
  readonly maxGapMs: number;
  /** When that gap ended, in ms from the move's start. */
  readonly maxGapEndMs: number;
  /** The largest gap between consecutive lines before the move: the guest's own jitter. */
  readonly baselineMaxGapMs: number;
  readonly writesPerSecondBefore: number;
  /** From the move's start to the source's last line (copy, memory, everything but the pause). */
  readonly writesPerSecondDuring: number;
  /** From the destination's first line to the window's end. */
  readonly writesPerSecondAfter: number;
  /** The last source line and the first destination line, `monotonicMs()`. */
  readonly lastSourceMs: number;
  readonly firstDestinationMs: number;
}

export function consoleFigures(
  lines: readonly ConsoleLine[],
  instants: MoveInstants,
): ConsoleFigures {
  const source = lines.filter((line) => line.side === 'source');
  const destination = lines.filter((line) => line.side === 'destination');
  const lastSourceMs = source.at(-1)?.atMs ?? Number.NaN;
  const firstDestinationMs = destination[0]?.atMs ?? Number.NaN;
  const rate = (from: number, to: number): number => {
    const acks = lines.filter(
      (line) => line.atMs > from && line.atMs <= to && ACK_LINE.test(line.text),
    ).length;
    return to > from ? acks / ((to - from) / 1000) : Number.NaN;
  };
  const during = largestGap(lines, instants.startMs, instants.endMs);
  return {
    switchoverGapMs: firstDestinationMs - lastSourceMs,
    maxGapMs: during.gapMs,
    maxGapEndMs: during.endMs - instants.startMs,
    baselineMaxGapMs: largestGap(lines, instants.beforeMs, instants.startMs).gapMs,
    writesPerSecondBefore: rate(instants.beforeMs, instants.startMs),
    writesPerSecondDuring: rate(instants.startMs, lastSourceMs),
    writesPerSecondAfter: rate(firstDestinationMs, instants.endMs),
    lastSourceMs,
    firstDestinationMs,
  };
}

/**
 * The largest gap between consecutive lines ending within [fromMs, toMs] (the first may start
 * before), and when it ended; NaN when there is no such gap.
 */
function largestGap(
  lines: readonly ConsoleLine[],
  fromMs: number,
  toMs: number,
): { gapMs: number; endMs: number } {
  let previous = Number.NaN;
  let largest = { gapMs: Number.NaN, endMs: Number.NaN };
  for (const line of lines) {
    if (line.atMs < fromMs) {
      previous = line.atMs;
      continue;
    }
    if (line.atMs > toMs) break;
    const gapMs = line.atMs - previous;
    if (Number.isFinite(gapMs) && !(gapMs <= largest.gapMs)) largest = { gapMs, endMs: line.atMs };
    previous = line.atMs;
  }
  return largest;
}

export interface ReconstructedLog {
  readonly log: GuestLog;
  /** Acks the console lost (a line cut at the switchover), rebuilt from the ones around them. */
  readonly lostAcks: number;
  /** What the guest itself reported wrong: `bad` (a re-read that did not match) and `error` lines. */
  readonly guestProblems: readonly string[];
}

/**
 * The guest log to verify the disk against. The writer's contract (guest-log.ts) fixes write N's
 * block (N mod B) and makes writes sequential, so `ack L` means every write up to L was
 * acknowledged: acks the console lost are rebuilt, and a disk that holds the newer write of a
 * block whose ack line was lost is not taken for a wrong one.
 */
export function reconstructGuestLog(lines: readonly ConsoleLine[]): ReconstructedLog {
  const observed = parseGuestLog(lines.map((line) => line.text).join('\n'));
  const boot = observed.bootIds;
  const writer = observed.writer;
  if (boot.length !== 1 || writer === undefined) {
    throw new Error(`the console shows ${boot.length} boots and writer ${String(writer)}`);
  }
  const header = [
    `ferry-guest boot ${boot[0]}`,
    `ferry-guest writer blocks ${writer.blocks} interval_ms ${writer.intervalMs} check_every ${writer.checkEvery}`,
  ];
  // The highest ack, not the last one: a line glued at the switchover may be an old number.
  const lastAcked = observed.acked.reduce((highest, ack) => Math.max(highest, ack.n), 0);
  const seen = new Set(observed.acked.map((ack) => ack.n));
  const acks: string[] = [];
  for (let n = 1; n <= lastAcked; n += 1) acks.push(`ack ${n} ${n % writer.blocks}`);
  const log = parseGuestLog([...header, ...acks].join('\n'));
  return {
    log,
    lostAcks: lastAcked - seen.size,
    guestProblems: [...observed.bad, ...observed.errors],
  };
}

/**
 * The blocks of the raw image at `imagePath` that do not hold their last acknowledged write
 * (guest-log.ts `verifyDisk`), as one line each; empty when every acknowledged write is there.
 */
export async function verifyImage(imagePath: string, log: GuestLog): Promise<string[]> {
  const handle = await open(imagePath, 'r');
  try {
    const read = async (offset: number, length: number): Promise<Buffer> => {
      const data = Buffer.alloc(length);
      await handle.read(data, 0, length, offset);
      return data;
    };
    const mismatches = await verifyDisk(read, log);
    return mismatches.map(
      (m) =>
        `block ${m.block} (byte ${m.block * GUEST_BLOCK_BYTES}) should hold write ${m.expectedWrite}, holds ${m.found}`,
    );
  } finally {
    await handle.close();
  }
}
