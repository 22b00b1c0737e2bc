import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
import type { HostPair } from '../test/cross-host/netns.js';
import { FerryNotImplementedError, ferryIdleCopy } from './cross-host-ferry.js';
import { applyLink, describeLink, type LinkSpec } from './cross-host-link.js';
import { type ReferenceTool, referenceCopy } from './cross-host-references.js';
import { log, step } from './migrate-step.js';
import { dropCaches } from './migrate-system.js';
import { fixed, markdownTable, medianOf, ratioAgainst } from './migrate-table.js';

/**
 * Sections "idle" and "tls" of the cross-host benchmark (issue 7): a whole-disk copy from host A
 * to host B with no guest I/O, Ferry against the reference tools over the same link in the same
 * run, as a ratio to the link's rate (goal for Ferry: ≥ 0.95 of the shaped link) and to a plain
 * TCP stream over the same link (what any copy can reach: TCP/IP headers alone take about 4% of a
 * 1500-byte MTU, and tbf counts them). "tls": the same copies with TLS-PSK on and off.
 */

export interface CrossHostContext {
  readonly pair: HostPair;
  readonly dir: string;
  readonly sourcePath: string;
  readonly sizeBytes: number;
  readonly runs: number;
  readonly stepTimeoutMs: number;
  readonly isDropCaches: boolean;
  readonly stop: AbortSignal;
}

export type CopyName = ReferenceTool | 'ferry' | 'ferry-nbd';

const COPY_LABEL: Readonly<Record<CopyName, string>> = {
  tcp: 'TCP stream (ceiling)',
  'qemu-img': 'qemu-img convert -n -t writeback → qemu-nbd',
  nbdcopy: 'nbdcopy --connections=4 --flush → qemu-nbd',
  ferry: 'Ferry live move (TLS-PSK between agents)',
  'ferry-nbd': "Ferry's NBD client ×4 → ferry serve",
};

interface CopyCase {
  readonly copy: CopyName;
  readonly isTls: boolean;
}

interface CopySample extends CopyCase {
  readonly link: LinkSpec;
  /** null: Ferry's side is not implemented yet. */
  readonly wallMs: number | null;
}

const MiB = 1024 * 1024;

/** Section "idle": every copy, TLS off, on each link. */
export async function runIdleSection(
  context: CrossHostContext,
  links: readonly LinkSpec[],
): Promise<string> {
  const cases: CopyCase[] = (['tcp', 'qemu-img', 'nbdcopy', 'ferry'] as const).map((copy) => ({
    copy,
    isTls: false,
  }));
  const samples = await measureLinks(context, links, cases);
  const lines = [
    `## Idle copy, ${formatSize(context.sizeBytes)}, host A → host B`,
    '',
    `Medians of ${context.runs} run(s); page cache dropped before each copy: ` +
      `${context.isDropCaches ? 'yes' : 'no'}.`,
    '',
    table(context, samples, links, cases),
    '',
  ];
  for (const link of links.filter((l) => l.mbit !== null)) {
    const ferry = rate(context, samples, link, { copy: 'ferry', isTls: false }) / linkRate(link);
    lines.push(
      `- Ferry / link rate, ${describeLink(link)}: ${ratioAgainst(ferry, { atLeast: 0.95 })}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

/** Section "tls": the NBD copies with TLS-PSK off and on, on each link. */
export async function runTlsSection(
  context: CrossHostContext,
  links: readonly LinkSpec[],
): Promise<string> {
  const cases: CopyCase[] = (['qemu-img', 'nbdcopy', 'ferry-nbd'] as const).flatMap((copy) => [
    { copy, isTls: false },
    { copy, isTls: true },
  ]);
  const samples = await measureLinks(context, links, cases);
  const lines = [
    `## TLS cost, idle copy of ${formatSize(context.sizeBytes)}`,
    '',
    `Medians of ${context.runs} run(s); TLS-PSK (NBD_OPT_STARTTLS, psktool key).`,
    '',
    table(context, samples, links, cases),
    '',
  ];
  for (const link of links) {
    for (const copy of ['qemu-img', 'nbdcopy', 'ferry-nbd'] as const) {
      const on = wallMsOf(samples, link, { copy, isTls: true });
      const off = wallMsOf(samples, link, { copy, isTls: false });
      lines.push(
        `- ${COPY_LABEL[copy]}, ${describeLink(link)}: TLS time / plain time ${fixed(on / off, 2)}`,
      );
    }
  }
  return `${lines.join('\n')}\n`;
}

async function measureLinks(
  context: CrossHostContext,
  links: readonly LinkSpec[],
  cases: readonly CopyCase[],
): Promise<CopySample[]> {
  const samples: CopySample[] = [];
  for (const link of links) {
    await applyLink(context.pair, link);
    for (let run = 1; run <= context.runs; run += 1) {
      // Rotate the order so no copy always runs first or last.
      const shift = (run - 1) % cases.length;
      for (const one of [...cases.slice(shift), ...cases.slice(0, shift)]) {
        context.stop.throwIfAborted();
        const wallMs = await measureOne(context, link, one);
        samples.push({ ...one, link, wallMs });
        const shown = wallMs === null ? 'not implemented yet' : `${fixed(wallMs / 1000, 2)} s`;
        log(
          `${describeLink(link)}, run ${run}/${context.runs}: ${COPY_LABEL[one.copy]}` +
            `${one.isTls ? ' (TLS)' : ''}: ${shown}`,
        );
      }
    }
  }
  await context.pair.setRate(null);
  return samples;
}

async function measureOne(
  context: CrossHostContext,
  link: LinkSpec,
  one: CopyCase,
): Promise<number | null> {
  if (context.isDropCaches && one.copy !== 'tcp' && !(await dropCaches())) {
    throw new Error('cannot drop the page cache (not root?): run with --no-drop-caches');
  }
  const what = `${COPY_LABEL[one.copy]} over ${describeLink(link)}`;
  const fixture = {
    pair: context.pair,
    sourcePath: context.sourcePath,
    sizeBytes: context.sizeBytes,
    dir: context.dir,
    timeoutMs: context.stepTimeoutMs,
  };
  if (one.copy !== 'ferry' && one.copy !== 'ferry-nbd') {
    return step(what, context.stepTimeoutMs, () =>
      referenceCopy(fixture, link, one.copy as ReferenceTool, one.isTls),
    );
  }
  try {
    const request = {
      ...fixture,
      link,
      isTls: one.isTls,
      kind: one.copy === 'ferry' ? ('move' as const) : ('nbd' as const),
      dir: join(context.dir, 'ferry'),
    };
    return await step(what, context.stepTimeoutMs, () => ferryIdleCopy(context.pair, request));
  } catch (error) {
    if (error instanceof FerryNotImplementedError) return null;
    throw error;
  }
}

function linkRate(link: LinkSpec): number {
  return link.mbit === null ? Number.NaN : (link.mbit * 1_000_000) / 8;
}

function wallMsOf(samples: readonly CopySample[], link: LinkSpec, one: CopyCase): number {
  return medianOf(
    samples.filter((s) => s.link === link && s.copy === one.copy && s.isTls === one.isTls),
    (s) => s.wallMs,
  );
}

/** Bytes per second of the median time. */
function rate(
  context: CrossHostContext,
  samples: readonly CopySample[],
  link: LinkSpec,
  one: CopyCase,
): number {
  return context.sizeBytes / (wallMsOf(samples, link, one) / 1000);
}

function table(
  context: CrossHostContext,
  samples: readonly CopySample[],
  links: readonly LinkSpec[],
  cases: readonly CopyCase[],
): string {
  const rows = links.flatMap((link) => {
    const tcp = rate(context, samples, link, { copy: 'tcp', isTls: false });
    return cases.map((one) => {
      const ms = wallMsOf(samples, link, one);
      const bytesPerSecond = rate(context, samples, link, one);
      const isMissing = samples.some(
        (s) => s.link === link && s.copy === one.copy && s.wallMs === null,
      );
      return [
        describeLink(link),
        COPY_LABEL[one.copy],
        one.isTls || one.copy === 'ferry' ? 'on' : 'off',
        isMissing ? 'not implemented yet' : fixed(ms / 1000, 2),
        fixed(bytesPerSecond / MiB, 1),
        fixed(bytesPerSecond / linkRate(link), 3),
        fixed(bytesPerSecond / tcp, 3),
      ];
    });
  });
  return markdownTable(
    ['link', 'copy', 'TLS', 'time s', 'MiB/s', '/ link rate', '/ TCP stream'],
    rows,
  );
}
