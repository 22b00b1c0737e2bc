import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
import type { MoveOutcome } from './migrate-ferry.js';
import type { FerryApiHost } from './migrate-ferry-api.js';
import { log, pause, step } from './migrate-step.js';
import { fixed, markdownTable } from './migrate-table.js';
import {
  type AgentMemory,
  mib,
  readAgentCpuSeconds,
  readAgentMemory,
  resetPeak,
} from './scale-agent-usage.js';
import { imagePathOf, type ScaleContext, settleCaches, startScaleFerry } from './scale-context.js';
import {
  GUEST_BLOCK_BYTES,
  type GuestSpec,
  meanIops,
  type RunningGuest,
  startGuest,
  verifyGuest,
} from './scale-guest.js';
import {
  allocatedBytesOf,
  checkStridedImage,
  type StridedImage,
  stridedLayout,
  writeStridedImage,
} from './scale-image.js';
import { RSS_GOAL_BYTES } from './scale-size.js';

/**
 * Section 2 (issue 9 item 4): eight thin disks, four in datastore `a` and four in `b`, each with
 * a fio guest writing through its export; after a few seconds of guest load alone, all eight move
 * at once (`mirror`, a → b and b → a) through the REST API. There is no per-host limit yet (the
 * scheduler's is not in), so all eight run together. Checked: every job succeeds, every guest
 * wrote all its blocks without an error (it was served throughout) and reads them back intact
 * (`fio --verify_only`), and every disk's own data equals the model. Reported: total time, each
 * move's time and bytes, each guest's IOPS before and during, and the agent's peak RSS.
 */
export interface EightSpec {
  readonly count: number;
  readonly diskBytes: number;
  /** Seconds each guest writes for, at `rateIops`: its region is their product in blocks. */
  readonly guestSeconds: number;
  readonly rateIops: number;
  readonly baselineSeconds: number;
}

interface DiskRun {
  readonly name: string;
  readonly from: string;
  readonly to: string;
  readonly guest: GuestSpec;
}

export async function runEightSection(context: ScaleContext, spec: EightSpec): Promise<string> {
  const dir = join(context.dir, 'eight');
  await mkdir(dir, { recursive: true });
  const regionBytes = spec.rateIops * spec.guestSeconds * GUEST_BLOCK_BYTES;
  // The disk's own data starts past the guest's region, so each can be checked on its own.
  const phaseBytes = Math.ceil(regionBytes / context.extentBytes) * context.extentBytes;
  const image = stridedLayout(spec.diskBytes, context.fraction, context.extentBytes, phaseBytes);
  const ferry = await startScaleFerry(context, dir);
  try {
    const disks = await importDisks(context, ferry, dir, image, spec, regionBytes);
    await settleCaches(context);
    const result = await moveUnderLoad(context, ferry, disks, spec);
    for (const disk of disks) await verifyGuest(disk.guest);
    for (const disk of disks) {
      await checkStridedImage(
        imagePathOf(dir, disk.to, disk.name),
        image,
        regionBytes + allocatedBytesOf(image) / 100 + 2 ** 20,
      );
    }
    log('eight: every guest verified, every disk equals its model');
    return report(context, spec, image, disks, result);
  } finally {
    await ferry.stop();
  }
}

async function importDisks(
  context: ScaleContext,
  ferry: FerryApiHost,
  dir: string,
  image: StridedImage,
  spec: EightSpec,
  regionBytes: number,
): Promise<DiskRun[]> {
  const disks: DiskRun[] = [];
  for (let index = 0; index < spec.count; index += 1) {
    const name = `disk${index}`;
    const from = index < spec.count / 2 ? 'a' : 'b';
    const staged = join(dir, `${name}.staged.raw`);
    await step(`writing ${name}`, context.stepTimeoutMs, () =>
      writeStridedImage(staged, image, context.stop),
    );
    await ferry.importDisk(name, staged, from);
    const guest: GuestSpec = {
      uri: `${ferry.nbdUrl}/${name}`,
      regionBytes,
      rateIops: spec.rateIops,
      dir,
      label: `guest-${name}`,
    };
    disks.push({ name, from, to: from === 'a' ? 'b' : 'a', guest });
  }
  return disks;
}

interface EightResult {
  readonly outcomes: readonly MoveOutcome[];
  readonly iops: readonly { before: number; during: number }[];
  readonly askedAtMs: number;
  readonly endedAtMs: number;
  readonly memoryBefore: AgentMemory;
  readonly memoryAfter: AgentMemory;
  /** The agent's CPU time over the moves (guests' requests included). */
  readonly cpuSeconds: number;
}

async function moveUnderLoad(
  context: ScaleContext,
  ferry: FerryApiHost,
  disks: readonly DiskRun[],
  spec: EightSpec,
): Promise<EightResult> {
  const guests: RunningGuest[] = disks.map((disk) => startGuest(disk.guest));
  // A guest that dies early fails the run at once, not when the moves end.
  const guestsDone = Promise.all(guests.map((guest) => guest.finished));
  guestsDone.catch(() => undefined);
  try {
    await pause(spec.baselineSeconds * 1000, context.stop);
    const memoryBefore = await readAgentMemory(ferry.pid);
    await resetPeak(ferry.pid);
    const cpuBefore = await readAgentCpuSeconds(ferry.pid);
    const askedAtMs = Date.now();
    log(`eight: ${disks.length} moves at once`);
    const outcomes = await step('eight moves', context.stepTimeoutMs, () =>
      Promise.race([
        Promise.all(
          disks.map((disk) =>
            ferry.move({ disk: disk.name, datastore: disk.to, method: 'mirror' }),
          ),
        ),
        guestsDone.then(() => new Promise<never>(() => undefined)),
      ]),
    );
    const endedAtMs = Math.max(...outcomes.map((o) => o.endedAtMs));
    const memoryAfter = await readAgentMemory(ferry.pid);
    const cpuSeconds = (await readAgentCpuSeconds(ferry.pid)) - cpuBefore;
    for (const [index, outcome] of outcomes.entries()) {
      if (outcome.state !== 'succeeded') {
        throw new Error(`disk${index}: the move ended ${outcome.state}: ${outcome.error}`);
      }
    }
    log(`eight: all moved in ${fixed((endedAtMs - askedAtMs) / 1000, 2)} s; waiting for guests`);
    const logs = await step('guests finishing', context.stepTimeoutMs, () => guestsDone);
    if (logs.some((samples) => (samples[samples.length - 1]?.atMs ?? 0) < endedAtMs)) {
      log('eight: a guest ended before the moves did: raise --guest-seconds');
    }
    const iops = logs.map((samples) => ({
      before: meanIops(samples, (samples[0]?.atMs ?? 0) + 1000, askedAtMs),
      during: meanIops(samples, askedAtMs, endedAtMs),
    }));
    return { outcomes, iops, askedAtMs, endedAtMs, memoryBefore, memoryAfter, cpuSeconds };
  } finally {
    await Promise.all(guests.map((guest) => guest.stop()));
  }
}

function report(
  context: ScaleContext,
  spec: EightSpec,
  image: StridedImage,
  disks: readonly DiskRun[],
  result: EightResult,
): string {
  const rows = disks.map((disk, index) => {
    const outcome = result.outcomes[index];
    const iops = result.iops[index];
    return [
      disk.name,
      `${disk.from} → ${disk.to}`,
      outcome === undefined ? '-' : fixed((outcome.endedAtMs - outcome.askedAtMs) / 1000, 2),
      outcome === undefined ? '-' : formatSize(outcome.bytesCopied),
      outcome === undefined ? '-' : fixed(outcome.downtimeMs ?? Number.NaN, 1),
      fixed(iops?.before ?? Number.NaN, 0),
      fixed(iops?.during ?? Number.NaN, 0),
      'ok',
    ];
  });
  const table = markdownTable(
    ['disk', 'move', 'time s', 'copied', 'downtime ms', 'IOPS before', 'IOPS during', 'verify'],
    rows,
  );
  const peak = result.memoryAfter.peakBytes;
  return [
    `## 2. ${spec.count} moves at once, ${formatSize(spec.diskBytes)} thin disks ` +
      `(${formatSize(allocatedBytesOf(image))} allocated each), two datastores, guests writing`,
    '',
    `Each guest: fio nbd engine, 4 KiB random writes at ${spec.rateIops} IOPS over its own ` +
      `${formatSize(spec.rateIops * spec.guestSeconds * GUEST_BLOCK_BYTES)}, every block once ` +
      `with a crc32c header, ${spec.baselineSeconds} s alone before the moves; verified after ` +
      "(`fio --verify_only`), and each disk's data checked against its model. No per-host " +
      `limit (the scheduler's is not in yet): all ${spec.count} ran together. Page cache ` +
      `dropped before: ${context.isDropCaches ? 'yes' : 'no'}.`,
    '',
    table,
    '',
    `- all ${spec.count} succeeded; total time (first asked → last over): ` +
      `${fixed((result.endedAtMs - result.askedAtMs) / 1000, 2)} s; agent CPU over it ` +
      `${fixed(result.cpuSeconds, 2)} s`,
    `- agent RSS before ${mib(result.memoryBefore.rssBytes)} MiB, peak during ${mib(peak)} MiB ` +
      `(goal < 256 MiB: ${peak < RSS_GOAL_BYTES ? 'met' : 'missed'})`,
    '',
  ].join('\n');
}
