import { rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
import {
  FerryNotImplementedError,
  type FerryUnderLoadSample,
  ferryUnderLoad,
  type MirrorMode,
} from './cross-host-ferry.js';
import type { CrossHostContext } from './cross-host-idle.js';
import { applyLink, describeLink, type LinkSpec, waitForListener } from './cross-host-link.js';
import { parseFioReport } from './fio-job.js';
import { log, step } from './migrate-step.js';
import { fixed, markdownTable, median, medianOf } from './migrate-table.js';

/**
 * Section "load" of the cross-host benchmark (issue 7): a live move A → B while fio writes 4k
 * at random, iodepth 16, through the source export; guest IOPS before and during, the move's
 * time and its downtime, for `--mirror sync` and `auto`, at each shaped rate. Ferry's side is
 * `ferryUnderLoad`; the reference row is the same fio job against `qemu-nbd` on host A with no
 * move at all: what the guest gets from QEMU's own server on the same machine.
 */

const FIO_PORT = 10811;
const MIRROR_MODES: readonly MirrorMode[] = ['sync', 'auto'];
/**
 * The guests: fio unbounded (it writes faster than a 1 Gbit/s link carries, so an async mirror
 * must turn synchronous), and fio held to 8000 IOPS (31 MiB/s, a quarter of that link), the
 * case the async mirror is for: its buffer holds, and the guest should barely notice.
 */
const GUESTS: readonly (number | null)[] = [null, 8000];
/** The rate-held guest runs on the fastest shaped link only, to keep the section short. */
function guestsOn(link: LinkSpec): readonly (number | null)[] {
  return link.mbit !== null && link.mbit >= 1000 ? GUESTS : [null];
}

interface LoadSample {
  readonly link: LinkSpec;
  readonly mirror: MirrorMode;
  readonly rateIops: number | null;
  /** null: Ferry's side is not implemented yet. */
  readonly ferry: FerryUnderLoadSample | null;
}

export async function runLoadSection(
  context: CrossHostContext,
  links: readonly LinkSpec[],
  seconds: number,
): Promise<string> {
  const baselineIops: number[] = [];
  const samples: LoadSample[] = [];
  for (let run = 1; run <= context.runs; run += 1) {
    const iops = await step('fio against qemu-nbd on A', context.stepTimeoutMs, () =>
      fioAgainstQemuNbd(context, seconds),
    );
    baselineIops.push(iops);
    log(`load run ${run}/${context.runs}: fio against qemu-nbd on A: ${fixed(iops, 0)} IOPS`);
    for (const link of links) {
      await applyLink(context.pair, link);
      for (const rateIops of guestsOn(link)) {
        for (const mirror of MIRROR_MODES) {
          context.stop.throwIfAborted();
          const ferry = await measureFerry(context, link, mirror, seconds, rateIops);
          samples.push({ link, mirror, rateIops, ferry });
          const shown =
            ferry === null ? 'not implemented yet' : `${fixed(ferry.moveMs / 1000, 2)} s`;
          log(
            `load run ${run}/${context.runs}: ${describeLink(link)}, ${guestLabel(rateIops)}, mirror ${mirror}: ${shown}`,
          );
        }
      }
    }
  }
  await context.pair.setRate(null);
  return report(context, links, seconds, median(baselineIops), samples);
}

async function measureFerry(
  context: CrossHostContext,
  link: LinkSpec,
  mirror: MirrorMode,
  seconds: number,
  rateIops: number | null,
): Promise<FerryUnderLoadSample | null> {
  const request = {
    rateIops,
    sourcePath: context.sourcePath,
    sizeBytes: context.sizeBytes,
    link,
    mirror,
    baselineSeconds: seconds,
    dir: join(context.dir, 'ferry'),
    timeoutMs: context.stepTimeoutMs,
  };
  try {
    return await step(`Ferry move under load, ${describeLink(link)}`, context.stepTimeoutMs, () =>
      ferryUnderLoad(context.pair, request),
    );
  } catch (error) {
    if (error instanceof FerryNotImplementedError) return null;
    throw error;
  }
}

/** fio 4k random writes, iodepth 16, for `seconds` against qemu-nbd over a sparse image on A. */
async function fioAgainstQemuNbd(context: CrossHostContext, seconds: number): Promise<number> {
  const { a } = context.pair;
  const image = join(context.dir, 'load.raw');
  await writeFile(image, '');
  await truncate(image, context.sizeBytes);
  const server = a.spawn('qemu-nbd', [
    '--cache=writeback',
    '-f',
    'raw',
    '-t',
    '--shared=8',
    '-b',
    a.ip,
    '-p',
    String(FIO_PORT),
    '-x',
    'bench',
    image,
  ]);
  try {
    await waitForListener(a, a.ip, FIO_PORT);
    const result = await a.exec(
      'fio',
      [
        '--name=guest',
        '--ioengine=nbd',
        `--uri=nbd://${a.ip}:${FIO_PORT}/bench`,
        '--rw=randwrite',
        '--bs=4096',
        '--iodepth=16',
        `--size=${context.sizeBytes}`,
        '--time_based=1',
        `--runtime=${seconds}`,
        '--norandommap=1',
        '--randrepeat=0',
        '--output-format=json',
      ],
      { timeoutMs: (seconds + 60) * 1000, cwd: context.dir },
    );
    if (result.code !== 0) throw new Error(`fio exited ${result.code}: ${result.stderr}`);
    return parseFioReport(result.stdout, 'fio against qemu-nbd on A').write.iops;
  } finally {
    server.kill('SIGTERM');
    if (server.exitCode === null && server.signalCode === null) {
      await new Promise((resolve) => server.once('exit', resolve));
    }
    await rm(image, { force: true });
  }
}

function guestLabel(rateIops: number | null): string {
  return rateIops === null ? 'fio unbounded' : `fio at ${rateIops} IOPS`;
}

function report(
  context: CrossHostContext,
  links: readonly LinkSpec[],
  seconds: number,
  baselineIops: number,
  samples: readonly LoadSample[],
): string {
  const rows = links.flatMap((link) =>
    guestsOn(link).flatMap((rateIops) =>
      MIRROR_MODES.map((mirror) => {
        const mine = samples.filter(
          (s) => s.link === link && s.mirror === mirror && s.rateIops === rateIops,
        );
        if (mine.some((s) => s.ferry === null)) {
          return [
            describeLink(link),
            `Ferry, --mirror ${mirror}, ${guestLabel(rateIops)}`,
            'not implemented yet',
            '',
            '',
            '',
          ];
        }
        const pick = (key: keyof FerryUnderLoadSample): number =>
          medianOf(mine, (s) => s.ferry?.[key] ?? null);
        return [
          describeLink(link),
          `Ferry, --mirror ${mirror}, ${guestLabel(rateIops)}`,
          fixed(pick('iopsBefore'), 0),
          fixed(pick('iopsDuring'), 0),
          fixed(pick('moveMs') / 1000, 2),
          fixed(pick('downtimeMs'), 1),
        ];
      }),
    ),
  );
  rows.unshift(['host A only', 'fio → qemu-nbd, no move', fixed(baselineIops, 0), '-', '-', '-']);
  return [
    `## Under load: fio randwrite 4k iodepth 16 through the source export, ${formatSize(context.sizeBytes)}`,
    '',
    `Medians of ${context.runs} run(s); ${seconds} s of fio alone before each move.`,
    '',
    markdownTable(['link', 'case', 'IOPS before', 'IOPS during', 'move s', 'downtime ms'], rows),
    '',
  ].join('\n');
}
