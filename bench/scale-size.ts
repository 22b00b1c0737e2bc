import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
import { runCommand } from './children.js';
import { checkSucceeded } from './migrate-ferry.js';
import { log, step } from './migrate-step.js';
import { fixed, markdownTable } from './migrate-table.js';
import { mib, readAgentCpuSeconds, readAgentMemory, resetPeak } from './scale-agent-usage.js';
import { imagePathOf, type ScaleContext, settleCaches, startScaleFerry } from './scale-context.js';
import {
  allocatedBytesOf,
  checkStridedImage,
  stridedLayout,
  writeStridedImage,
} from './scale-image.js';

/**
 * Section 1 (issue 9 item 4, "Scale"): one thin disk per size with the same share allocated in
 * extents at regular strides, moved by `mirror` from datastore `a` to `b` by a fresh `ferry serve`,
 * with no guest I/O. Measured: wall time (job asked → job over), the bytes the job copied, and the
 * agent's resident memory before and its peak during the move (VmHWM, reset before the move).
 * The goal: time grows with the allocated data, not the disk size, and the peak stays under
 * 256 MiB. References on the same image in the same run: `qemu-img convert -O raw` (sparse-aware:
 * it skips holes and zero blocks) and `cp --sparse=always`, each ending durable as Ferry does.
 * After the move the destination is checked against the model (every extent, and no hole filled).
 */
export interface SizeSample {
  readonly sizeBytes: number;
  readonly allocatedBytes: number;
  readonly ferryMs: number;
  readonly jobMs: number;
  readonly bytesCopied: number;
  /** The agent's CPU time (user + system) over the move. */
  readonly cpuSeconds: number;
  readonly rssBeforeBytes: number;
  readonly rssPeakBytes: number;
  readonly qemuImgMs: number;
  readonly cpMs: number;
}

const DISK = 'scale';
export const RSS_GOAL_BYTES = 256 * 2 ** 20;

export async function runSizeSection(
  context: ScaleContext,
  sizes: readonly number[],
): Promise<string> {
  const samples: SizeSample[] = [];
  for (const sizeBytes of sizes) {
    context.stop.throwIfAborted();
    const sample = await measureSize(context, sizeBytes);
    samples.push(sample);
    log(
      `size ${formatSize(sizeBytes)}: Ferry ${fixed(sample.ferryMs / 1000, 2)} s ` +
        `(agent CPU ${fixed(sample.cpuSeconds, 2)} s), ` +
        `qemu-img ${fixed(sample.qemuImgMs / 1000, 2)} s, cp ${fixed(sample.cpMs / 1000, 2)} s, ` +
        `agent peak RSS ${mib(sample.rssPeakBytes)} MiB`,
    );
  }
  return report(context, samples);
}

async function measureSize(context: ScaleContext, sizeBytes: number): Promise<SizeSample> {
  const dir = join(context.dir, `size-${formatSize(sizeBytes)}`);
  await mkdir(dir, { recursive: true });
  const fraction =
    context.allocatedBytes === undefined
      ? context.fraction
      : Math.min(1, context.allocatedBytes / sizeBytes);
  const image = stridedLayout(sizeBytes, fraction, context.extentBytes);
  const staged = join(dir, 'staged.raw');
  const writtenAtMs = Date.now();
  await step(`writing the ${formatSize(sizeBytes)} image`, context.stepTimeoutMs, () =>
    writeStridedImage(staged, image, context.stop),
  );
  log(
    `size ${formatSize(sizeBytes)}: wrote ${formatSize(allocatedBytesOf(image))} in ` +
      `${image.extentCount} extents in ${fixed((Date.now() - writtenAtMs) / 1000, 1)} s`,
  );
  const ferry = await startScaleFerry(context, dir);
  let move: Omit<SizeSample, 'sizeBytes' | 'allocatedBytes' | 'qemuImgMs' | 'cpMs'>;
  try {
    await ferry.importDisk(DISK, staged, 'a');
    await settleCaches(context);
    const before = await readAgentMemory(ferry.pid);
    await resetPeak(ferry.pid);
    const cpuBefore = await readAgentCpuSeconds(ferry.pid);
    const what = `moving the ${formatSize(sizeBytes)} disk`;
    const outcome = await step(what, context.stepTimeoutMs, () =>
      ferry.move({ disk: DISK, datastore: 'b', method: 'mirror' }),
    );
    checkSucceeded(outcome, what);
    const after = await readAgentMemory(ferry.pid);
    const cpuSeconds = (await readAgentCpuSeconds(ferry.pid)) - cpuBefore;
    move = {
      cpuSeconds,
      ferryMs: outcome.endedAtMs - outcome.askedAtMs,
      jobMs: outcome.durationMs,
      bytesCopied: outcome.bytesCopied,
      rssBeforeBytes: before.rssBytes,
      rssPeakBytes: after.peakBytes,
    };
  } finally {
    await ferry.stop();
  }
  const moved = imagePathOf(dir, 'b', DISK);
  await step('checking the destination', context.stepTimeoutMs, () =>
    checkStridedImage(moved, image, allocatedBytesOf(image) / 100 + 2 ** 20),
  );
  const references = await runReferences(context, moved, dir);
  await rm(dir, { recursive: true, force: true });
  return { sizeBytes, allocatedBytes: allocatedBytesOf(image), ...move, ...references };
}

/** qemu-img convert and cp of `source` into `dir`, each from a cold cache, output removed. */
async function runReferences(
  context: ScaleContext,
  source: string,
  dir: string,
): Promise<{ qemuImgMs: number; cpMs: number }> {
  const timeoutMs = context.stepTimeoutMs;
  const output = join(dir, 'reference-out.raw');
  await settleCaches(context);
  let startedMs = performance.now();
  // `-t writeback`: its default target cache mode, `unsafe`, never flushes; Ferry's ends durable.
  await runCommand(
    'qemu-img convert',
    'qemu-img',
    ['convert', '-f', 'raw', '-O', 'raw', '-t', 'writeback', source, output],
    { timeoutMs },
  );
  const qemuImgMs = performance.now() - startedMs;
  await rm(output, { force: true });
  await settleCaches(context);
  startedMs = performance.now();
  await runCommand('cp', 'cp', ['--sparse=always', source, output], { timeoutMs });
  await runCommand('sync', 'sync', [output], { timeoutMs });
  const cpMs = performance.now() - startedMs;
  await rm(output, { force: true });
  return { qemuImgMs, cpMs };
}

function report(context: ScaleContext, samples: readonly SizeSample[]): string {
  const gib = (bytes: number): number => bytes / 2 ** 30;
  const rows = samples.map((s) => [
    formatSize(s.sizeBytes),
    formatSize(s.allocatedBytes),
    fixed(s.ferryMs / 1000, 2),
    fixed(s.jobMs / 1000, 2),
    formatSize(s.bytesCopied),
    fixed(s.cpuSeconds, 2),
    fixed(s.ferryMs / 1000 / gib(s.allocatedBytes), 2),
    fixed(s.qemuImgMs / 1000, 2),
    fixed(s.cpMs / 1000, 2),
    fixed(s.ferryMs / s.qemuImgMs, 2),
    fixed(s.ferryMs / s.cpMs, 2),
    mib(s.rssBeforeBytes),
    `${mib(s.rssPeakBytes)} (${s.rssPeakBytes < RSS_GOAL_BYTES ? 'met' : 'missed'})`,
  ]);
  const table = markdownTable(
    [
      'disk',
      'allocated',
      'Ferry s',
      'job s',
      'copied',
      'agent CPU s',
      'Ferry s / alloc GiB',
      'qemu-img s',
      'cp s',
      'Ferry/qemu-img',
      'Ferry/cp',
      'agent RSS before MiB',
      'agent peak RSS MiB (goal < 256)',
    ],
    rows,
  );
  const first = samples[0];
  const last = samples[samples.length - 1];
  const lines = [
    `## 1. One thin disk, ${
      context.allocatedBytes === undefined
        ? `${(context.fraction * 100).toFixed(2)}%`
        : formatSize(context.allocatedBytes)
    } allocated, moved a → b (mirror, idle)`,
    '',
    `Data in ${formatSize(context.extentBytes)} extents at regular strides; a fresh \`ferry serve\` ` +
      `per size; page cache dropped before each copy: ${context.isDropCaches ? 'yes' : 'no'}. ` +
      'Ferry s: job asked → over (destination created, source removed); peak RSS: VmHWM of the ' +
      'agent, reset just before the move; agent CPU s: its user + system time over the move. ' +
      'Destination checked against the model after each move.',
    '',
    table,
    '',
  ];
  if (first !== undefined && last !== undefined && last !== first) {
    const perGib = (s: SizeSample): number => s.ferryMs / gib(s.allocatedBytes);
    const cpuPerGib = (s: SizeSample): number => s.cpuSeconds / gib(s.allocatedBytes);
    lines.push(
      `- ${formatSize(first.sizeBytes)} → ${formatSize(last.sizeBytes)} ` +
        `(×${fixed(last.sizeBytes / first.sizeBytes, 0)} size, ` +
        `×${fixed(last.allocatedBytes / first.allocatedBytes, 0)} allocated): time per allocated ` +
        `GiB ×${fixed(perGib(last) / perGib(first), 2)}, agent CPU per allocated GiB ` +
        `×${fixed(cpuPerGib(last) / cpuPerGib(first), 2)}, agent peak RSS ` +
        `${mib(first.rssPeakBytes)} → ${mib(last.rssPeakBytes)} MiB`,
      '',
    );
  }
  return lines.join('\n');
}
