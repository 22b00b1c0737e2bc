import { randomFill } from 'node:crypto';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';
import type { HostPair } from '../test/cross-host/netns.js';
import type { GuestImage } from '../test/guest/guest-image.js';
import type { LinkSpec } from './cross-host-link.js';

/**
 * What the two flows of the VM motion benchmark (issue 8) share: the guest they move, the disk
 * image it starts from, and the sample each move yields.
 *
 * The guest: the recording guest (test/guest/init.sh) under TCG, writing numbered 4 KiB blocks
 * to /dev/vda with O_DIRECT and fsync, one every `intervalMs` at most, and printing `tick` and
 * `ack` lines on its serial console. The disk: a raw image whose first `filledBytes` hold random
 * data, so the storage copy has something to carry; the rest is a hole.
 */

export interface MotionGuest {
  readonly image: GuestImage;
  readonly memoryBytes: number;
  readonly diskBytes: number;
  /** Blocks of the writer's region (`ferry.blocks`). */
  readonly blocks: number;
  readonly intervalMs: number;
}

/** The kernel command line of the guest: the same for both flows. */
export function guestAppend(guest: MotionGuest): string {
  return [
    'console=ttyS0',
    'quiet',
    'panic=-1',
    'ferry.guest=writer',
    `ferry.blocks=${guest.blocks}`,
    `ferry.interval_ms=${guest.intervalMs}`,
  ].join(' ');
}

/** One move's setting: the hosts, the link, the guest, and how long to watch around the move. */
export interface MotionContext {
  readonly pair: HostPair;
  readonly link: LinkSpec;
  readonly guest: MotionGuest;
  /** The template image; each move copies it (Ferry's import takes the file it is given). */
  readonly templatePath: string;
  /** A scratch directory for this move's files. */
  readonly dir: string;
  /** Seconds of guest I/O measured before the move starts. */
  readonly beforeSeconds: number;
  /** Seconds the guest is watched at the destination before it is stopped and its disk checked. */
  readonly afterSeconds: number;
  /** Limit of the move itself, and of the guest's boot. */
  readonly timeoutMs: number;
  readonly stop: AbortSignal;
}

export type FlowName = 'qemu' | 'ferry';

/** What one move measured; NaN where a figure does not apply to the flow. */
export interface MotionSample {
  readonly flow: FlowName;
  readonly link: string;
  /** From the first step of the move to the guest running at the destination. */
  readonly totalMs: number;
  /** QEMU flow: from `blockdev-mirror` to the destination running (the definition). */
  readonly fromMirrorMs: number;
  /** Guest-observed pause: the source's last console line to the destination's first. */
  readonly pauseMs: number;
  /** The largest gap between console lines during the move and after it. */
  readonly maxGapMs: number;
  /** When that gap ended, ms from the move's start; and when the switchover's gap ended. */
  readonly maxGapEndMs: number;
  readonly pauseEndMs: number;
  /**
   * From the flow's "running at the destination" (QEMU flow: `cont` returned; Ferry: the command
   * exited) to the destination's first console line: what the pause holds after the flow is done.
   */
  readonly firstLineAfterRunningMs: number;
  /** The largest gap before the move: the guest's own jitter, for scale. */
  readonly baselineMaxGapMs: number;
  /** QEMU's `downtime` (query-migrate). */
  readonly qemuDowntimeMs: number;
  /** Ferry: guest I/O held for the storage switchover. */
  readonly storageSwitchoverMs: number;
  /** Ferry's own measure of the pause (pre-switchover to running at the peer). */
  readonly reportedPauseMs: number;
  readonly writesPerSecondBefore: number;
  readonly writesPerSecondDuring: number;
  readonly writesPerSecondAfter: number;
  /** Acknowledged writes checked on the destination's disk, and what did not match. */
  readonly verifiedWrites: number;
  readonly mismatches: readonly string[];
  /** Acks the console lost (rebuilt), and what the guest reported wrong itself. */
  readonly lostAcks: number;
  readonly guestProblems: readonly string[];
  /** How precise the console stamps are (measured). */
  readonly stampResolution: string;
}

const FILL_CHUNK_BYTES = 4 * 1024 * 1024;
const fill = promisify(randomFill);

/** A raw image of `sizeBytes`: random data in the first `filledBytes`, a hole after. */
export async function writeTemplateImage(
  path: string,
  sizeBytes: number,
  filledBytes: number,
  stop: AbortSignal,
): Promise<void> {
  const chunk = Buffer.allocUnsafe(FILL_CHUNK_BYTES);
  const handle = await open(path, 'wx');
  try {
    await handle.truncate(sizeBytes);
    for (let at = 0; at < filledBytes; at += chunk.length) {
      stop.throwIfAborted();
      await fill(chunk);
      await handle.write(chunk, 0, Math.min(chunk.length, filledBytes - at), at);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}
