/**
 * The host side of the recording guest (init.sh, `ferry.guest=writer`): parse its console log
 * and check a disk against what it acknowledged.
 *
 * The guest's contract: write N (from 1) goes to block N mod B of the region and holds
 * blockContent(boot, N, block); writes are strictly sequential and `ack N` is printed only
 * after write N completed with O_DIRECT and fsync. So after the last `ack L` every block holds
 * its last acknowledged write, except the block of write L+1, which was in flight and may hold
 * either that write or what it held before.
 *
 * A log is the guest's console output in order: for a live migration, the source's serial log
 * followed by the destination's. Lines end in "\r\n" (the tty adds the "\r"); lines that are
 * not the guest's (kernel messages, a garbled line) are ignored, and the continuity checks
 * (`problems`) say if that lost anything that matters.
 */

export const GUEST_BLOCK_BYTES = 4096;

/**
 * The 4096 bytes of write `n` to `block`: the header line, then "<n>." repeated, cut at 4096.
 * init.sh's make_block builds the same bytes; change both together (the image hash covers
 * init.sh, so a changed script rebuilds the guest).
 */
export function blockContent(bootId: string, n: number, block: number): Buffer {
  const header = `ferry-block ${block} write ${n} boot ${bootId}\n`;
  const unit = `${n}.`;
  const fill = unit.repeat(Math.ceil(GUEST_BLOCK_BYTES / unit.length));
  return Buffer.from((header + fill).slice(0, GUEST_BLOCK_BYTES), 'latin1');
}

export interface GuestAck {
  readonly boot: string;
  readonly n: number;
  readonly block: number;
}

export interface GuestWriterConfig {
  readonly blocks: number;
  readonly intervalMs: number;
  readonly checkEvery: number;
}

export interface GuestLog {
  /** Each `ferry-guest boot <id>` in order; more than one means the guest rebooted. */
  readonly bootIds: string[];
  /** The writer's settings (from the last `ferry-guest writer` line), if it started. */
  readonly writer: GuestWriterConfig | undefined;
  /** Every `ack N block`, in order, with the boot it belongs to. */
  readonly acked: GuestAck[];
  /** N of the last ack, 0 if none. */
  readonly lastAcked: number;
  /** The counter of every `tick <counter> <acked>`, in order. */
  readonly counters: number[];
  /** In-guest re-reads that passed (`check M ok`). */
  readonly checksOk: number;
  /** `bad ...` lines: the guest read back something it had not written. */
  readonly bad: string[];
  /** `error ...` lines: a write failed in the guest (and was retried). */
  readonly errors: string[];
  /**
   * Breaks of the guest's contract seen in the log: an ack out of sequence or at the wrong
   * block, or a tick counter that did not increase. Empty for a healthy run.
   */
  readonly problems: string[];
}

const BOOT = /^ferry-guest boot (\S+)$/;
const WRITER = /^ferry-guest writer blocks (\d+) interval_ms (\d+) check_every (\d+)$/;
const TICK = /^tick (\d+) (\d+)$/;
const ACK = /^ack (\d+) (\d+)$/;
const CHECK = /^check (\d+) ok$/;

export function parseGuestLog(text: string): GuestLog {
  const log = {
    bootIds: [] as string[],
    writer: undefined as GuestWriterConfig | undefined,
    acked: [] as GuestAck[],
    lastAcked: 0,
    counters: [] as number[],
    checksOk: 0,
    bad: [] as string[],
    errors: [] as string[],
    problems: [] as string[],
  };
  let boot: string | undefined;
  let lastCounter = 0;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/\r$/, '');
    const bootLine = BOOT.exec(line);
    if (bootLine) {
      boot = bootLine[1]!;
      log.bootIds.push(boot);
      log.lastAcked = 0;
      lastCounter = 0;
      continue;
    }
    const writer = WRITER.exec(line);
    if (writer) {
      const [blocks, intervalMs, checkEvery] = writer.slice(1).map(Number) as [
        number,
        number,
        number,
      ];
      log.writer = { blocks, intervalMs, checkEvery };
      continue;
    }
    const tick = TICK.exec(line);
    if (tick) {
      const counter = Number(tick[1]);
      if (counter <= lastCounter) log.problems.push(`tick counter ${counter} after ${lastCounter}`);
      lastCounter = counter;
      log.counters.push(counter);
      continue;
    }
    const ack = ACK.exec(line);
    if (ack) {
      const n = Number(ack[1]);
      const block = Number(ack[2]);
      if (boot === undefined) {
        log.problems.push(`ack ${n} before any boot line`);
        continue;
      }
      if (n !== log.lastAcked + 1) log.problems.push(`ack ${n} after ack ${log.lastAcked}`);
      if (log.writer !== undefined && block !== n % log.writer.blocks) {
        log.problems.push(`ack ${n} at block ${block}, not ${n % log.writer.blocks}`);
      }
      log.acked.push({ boot, n, block });
      log.lastAcked = n;
      continue;
    }
    if (CHECK.test(line)) log.checksOk++;
    else if (line.startsWith('bad ')) log.bad.push(line);
    else if (line.startsWith('error ')) log.errors.push(line);
  }
  return log;
}

/** What each block written by boot `bootId` must hold: its last acknowledged write. */
export function expectedBlocks(bootId: string, acks: readonly GuestAck[]): Map<number, Buffer> {
  const lastWrite = new Map<number, number>();
  for (const ack of acks) if (ack.boot === bootId) lastWrite.set(ack.block, ack.n);
  const blocks = new Map<number, Buffer>();
  for (const [block, n] of lastWrite) blocks.set(block, blockContent(bootId, n, block));
  return blocks;
}

export interface BlockMismatch {
  readonly block: number;
  /** The write the block should hold. */
  readonly expectedWrite: number;
  /** The first line of what it holds, for the failure message. */
  readonly found: string;
}

/**
 * The blocks of `log`'s (single) boot whose content on the disk is not their last acknowledged
 * write. `read` reads the guest's disk (offset and length in bytes). The block of the write in
 * flight (last ack + 1) may also hold that write; if it was never acknowledged before, it is not
 * checked at all, since what it held before the guest started is not known here.
 */
export async function verifyDisk(
  read: (offset: number, length: number) => Promise<Buffer>,
  log: GuestLog,
): Promise<BlockMismatch[]> {
  if (log.bootIds.length !== 1) {
    throw new Error(`verifyDisk checks one boot; the log has ${log.bootIds.length}`);
  }
  const boot = log.bootIds[0]!;
  const expected = expectedBlocks(boot, log.acked);
  const inFlight =
    log.writer === undefined
      ? undefined
      : {
          block: (log.lastAcked + 1) % log.writer.blocks,
          data: blockContent(boot, log.lastAcked + 1, (log.lastAcked + 1) % log.writer.blocks),
        };
  const lastWrite = new Map<number, number>();
  for (const ack of log.acked) lastWrite.set(ack.block, ack.n);

  const mismatches: BlockMismatch[] = [];
  for (const block of [...expected.keys()].sort((a, b) => a - b)) {
    const want = expected.get(block)!;
    const got = await read(block * GUEST_BLOCK_BYTES, GUEST_BLOCK_BYTES);
    if (got.equals(want)) continue;
    if (inFlight !== undefined && block === inFlight.block && got.equals(inFlight.data)) continue;
    mismatches.push({ block, expectedWrite: lastWrite.get(block)!, found: firstLine(got) });
  }
  return mismatches;
}

function firstLine(data: Buffer): string {
  if (data.every((byte) => byte === 0)) return '(zeros)';
  const end = data.indexOf(0x0a);
  const line = data.toString('latin1', 0, end < 0 || end > 80 ? 80 : end);
  return JSON.stringify(line);
}
