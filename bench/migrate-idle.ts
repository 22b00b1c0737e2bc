import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
import { runCommand } from './children.js';
import { writeImage, writeScatteredImage } from './image-file.js';
import {
  type BenchContext,
  copyImage,
  settle,
  startFerryWithTwoStores,
} from './migrate-context.js';
import { checkSucceeded, type FerryHost } from './migrate-ferry.js';
import { log, step } from './migrate-step.js';
import { fixed, markdownTable, medianOf, ratioAgainst } from './migrate-table.js';

/**
 * Section 1, idle copies (issue 3 item 8): a thick disk full of random data, and a thin one with
 * 10% allocated in scattered 1 MiB extents, moved by Ferry's `mirror` from datastore `a` to `b`
 * on the same file system with no guest I/O, against `qemu-img convert` (with and without -W,
 * out-of-order parallel writes) and `cp --sparse=never` copying the same image. Every copy ends
 * durable: qemu-img runs with `-t writeback` so it flushes at close (its default, `unsafe`, never
 * does), cp is followed by a `sync` of its file, Ferry flushes the
 * destination before its commit. Time is wall time from asking to the end (Ferry: job asked →
 * job over, the destination's creation and the source's removal included).
 */
type CopyName =
  | 'ferry-thick'
  | 'qemu-img-thick'
  | 'qemu-img-W-thick'
  | 'cp-thick'
  | 'ferry-thin'
  | 'qemu-img-thin';

const COPY_LABEL: Readonly<Record<CopyName, string>> = {
  'ferry-thick': 'Ferry mirror, thick',
  'qemu-img-thick': 'qemu-img convert, thick',
  'qemu-img-W-thick': 'qemu-img convert -W, thick',
  'cp-thick': 'cp --sparse=never + sync, thick',
  'ferry-thin': 'Ferry mirror, thin 10%',
  'qemu-img-thin': 'qemu-img convert, thin 10%',
};
const COPIES = Object.keys(COPY_LABEL) as CopyName[];

interface IdleSample {
  readonly copy: CopyName;
  readonly wallMs: number;
  /** Ferry only: the job's own duration. */
  readonly engineMs: number | null;
}

interface IdleImages {
  readonly thick: string;
  readonly thin: string;
  readonly thinAllocatedBytes: number;
}

const THIN_FRACTION = 0.1;
const THIN_EXTENT_BYTES = 1024 * 1024;

export async function runIdleSection(context: BenchContext, sizeBytes: number): Promise<string> {
  const dir = join(context.dir, 'idle');
  await mkdir(dir, { recursive: true });
  const images = await makeImages(context, dir, sizeBytes);
  const ferry = await startFerryWithTwoStores(context, dir, context.ferryDriver);
  const samples: IdleSample[] = [];
  try {
    const where = await importDisks(context, ferry, dir, images);
    for (let run = 1; run <= context.runs; run += 1) {
      // Rotate the order so no copy always runs first or last.
      const shift = (run - 1) % COPIES.length;
      for (const copy of [...COPIES.slice(shift), ...COPIES.slice(0, shift)]) {
        context.stop.throwIfAborted();
        // Every copy starts with its source read once (warm below the VM, where the page cache
        // drop cannot reach) and the page cache dropped: the same footing for every tool. Without
        // it, the tool that reads a file first pays for the host's cold cache alone.
        await warmUp(sourceOf(copy, { where, images, dir }));
        await settle(context);
        const sample = await measure(context, copy, { ferry, where, images, dir });
        samples.push(sample);
        log(
          `idle run ${run}/${context.runs}: ${COPY_LABEL[copy]}: ${fixed(sample.wallMs / 1000, 2)} s`,
        );
      }
    }
  } finally {
    await ferry.stop();
  }
  return report(context, sizeBytes, images, samples, ferry.driver);
}

async function makeImages(
  context: BenchContext,
  dir: string,
  sizeBytes: number,
): Promise<IdleImages> {
  const thick = join(dir, 'master-thick.raw');
  const thin = join(dir, 'master-thin.raw');
  const startedMs = Date.now();
  await step('writing the thick image', context.stepTimeoutMs, () =>
    writeImage(thick, sizeBytes, context.stop),
  );
  const spec = { fraction: THIN_FRACTION, extentBytes: THIN_EXTENT_BYTES };
  const thinAllocatedBytes = await step('writing the thin image', context.stepTimeoutMs, () =>
    writeScatteredImage(thin, sizeBytes, spec, context.stop),
  );
  log(
    `idle: wrote ${formatSize(sizeBytes)} thick and thin (${formatSize(thinAllocatedBytes)} ` +
      `allocated) images in ${fixed((Date.now() - startedMs) / 1000, 1)} s`,
  );
  return { thick, thin, thinAllocatedBytes };
}

/** Imports a copy of each image into datastore `a`; returns where each disk is. */
async function importDisks(
  context: BenchContext,
  ferry: FerryHost,
  dir: string,
  images: IdleImages,
): Promise<Map<string, string>> {
  const stage = join(dir, 'stage');
  await mkdir(stage, { recursive: true });
  for (const kind of ['thick', 'thin'] as const) {
    const staged = join(stage, `${kind}.raw`);
    await step(`copying the ${kind} image for Ferry`, context.stepTimeoutMs, () =>
      copyImage(images[kind], staged, kind, context.stepTimeoutMs),
    );
    await ferry.importDisk(kind, staged, 'a');
  }
  return new Map([
    ['thick', 'a'],
    ['thin', 'a'],
  ]);
}

interface Fixture {
  readonly ferry: FerryHost;
  /** Disk name → the datastore it is in now; each move flips it. */
  readonly where: Map<string, string>;
  readonly images: IdleImages;
  readonly dir: string;
}

async function measure(
  context: BenchContext,
  copy: CopyName,
  fixture: Fixture,
): Promise<IdleSample> {
  const timeoutMs = context.stepTimeoutMs;
  const what = `idle copy ${COPY_LABEL[copy]}`;
  if (copy === 'ferry-thick' || copy === 'ferry-thin') {
    const disk = copy === 'ferry-thick' ? 'thick' : 'thin';
    const to = fixture.where.get(disk) === 'a' ? 'b' : 'a';
    const outcome = await step(what, timeoutMs, () =>
      fixture.ferry.move({ disk, datastore: to, method: 'mirror' }),
    );
    checkSucceeded(outcome, what);
    fixture.where.set(disk, to);
    return { copy, wallMs: outcome.endedAtMs - outcome.askedAtMs, engineMs: outcome.durationMs };
  }
  const output = join(fixture.dir, 'copy-out.raw');
  const source = copy === 'qemu-img-thin' ? fixture.images.thin : fixture.images.thick;
  const startedMs = performance.now();
  if (copy === 'cp-thick') {
    await runCommand('cp', 'cp', ['--sparse=never', source, output], { timeoutMs });
    await runCommand('sync', 'sync', [output], { timeoutMs });
  } else {
    const parallel = copy === 'qemu-img-W-thick' ? ['-W'] : [];
    // `-t writeback`: qemu-img convert's default target cache mode is `unsafe`, which never
    // flushes; Ferry's copy ends durable (its commit needs it), so the reference must too.
    const args = [
      'convert',
      '-f',
      'raw',
      '-O',
      'raw',
      '-t',
      'writeback',
      ...parallel,
      source,
      output,
    ];
    await runCommand('qemu-img convert', 'qemu-img', args, { timeoutMs });
  }
  const wallMs = performance.now() - startedMs;
  await rm(output, { force: true });
  return { copy, wallMs, engineMs: null };
}

function report(
  context: BenchContext,
  sizeBytes: number,
  images: IdleImages,
  samples: readonly IdleSample[],
  driver: string,
): string {
  const wallMs = (copy: CopyName): number =>
    medianOf(
      samples.filter((s) => s.copy === copy),
      (s) => s.wallMs,
    );
  const engineMs = (copy: CopyName): number =>
    medianOf(
      samples.filter((s) => s.copy === copy),
      (s) => s.engineMs,
    );
  const qemuBestMs = Math.min(wallMs('qemu-img-thick'), wallMs('qemu-img-W-thick'));
  const mibPerSecond = (ms: number): number => sizeBytes / (1024 * 1024) / (ms / 1000);
  const rows = COPIES.map((copy) => {
    const ms = wallMs(copy);
    const isThin = copy.endsWith('thin');
    return [
      COPY_LABEL[copy],
      fixed(ms / 1000, 2),
      fixed(engineMs(copy) / 1000, 2),
      isThin ? '-' : fixed(mibPerSecond(ms), 0),
      isThin
        ? fixed(ms / wallMs(copy === 'ferry-thin' ? 'ferry-thick' : 'qemu-img-thick'), 3)
        : '-',
    ];
  });
  const table = markdownTable(
    ['copy', 'time s', 'Ferry job s', 'MiB/s', 'time / same tool thick'],
    rows,
  );
  const throughputRatio = qemuBestMs / wallMs('ferry-thick');
  const thinRatio = wallMs('ferry-thin') / wallMs('ferry-thick');
  return [
    `## 1. Idle copy, ${formatSize(sizeBytes)} disk, datastore a → b on one file system`,
    '',
    `Medians of ${context.runs} run(s); page cache dropped before each copy: ` +
      `${context.isDropCaches ? 'yes' : 'no'}; Ferry driven through: ${driver}. The thin disk ` +
      `has ${formatSize(images.thinAllocatedBytes)} in ${formatSize(THIN_EXTENT_BYTES)} extents.`,
    '',
    table,
    '',
    `- Ferry thick throughput / best qemu-img convert: ${ratioAgainst(throughputRatio, { atLeast: 0.95 })}`,
    `- Ferry thin time / Ferry thick time: ${ratioAgainst(thinRatio, { atMost: 0.15 })}`,
    '',
  ].join('\n');
}

/** The file a copy reads: the Ferry disk's current image, or the master image for the others. */
function sourceOf(
  copy: CopyName,
  fixture: { where: Map<string, string>; images: IdleImages; dir: string },
): string {
  if (copy === 'ferry-thick' || copy === 'ferry-thin') {
    const disk = copy === 'ferry-thick' ? 'thick' : 'thin';
    return join(fixture.dir, fixture.where.get(disk) ?? 'a', `${disk}.raw`);
  }
  return copy === 'qemu-img-thin' ? fixture.images.thin : fixture.images.thick;
}

/** Reads `path` once from start to end and throws the data away. */
async function warmUp(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.allocUnsafe(8 * 1024 * 1024);
    for (let at = 0; ; at += buffer.length) {
      const { bytesRead } = await handle.read(buffer, 0, buffer.length, at);
      if (bytesRead === 0) return;
    }
  } finally {
    await handle.close();
  }
}
