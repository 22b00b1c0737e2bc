import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { MethodName } from '../src/migrate/method.js';
import { formatSize } from '../src/util/size.js';
import type { HostWaits } from './host-waits.js';
import {
  type BenchContext,
  copyImage,
  settle,
  startFerryWithTwoStores,
} from './migrate-context.js';
import {
  checkSucceeded,
  type FerryHost,
  formatStun,
  medianStun,
  type StunBreakdown,
} from './migrate-ferry.js';
import {
  type GuestImpact,
  guestImpact,
  type LoadTrace,
  type MigrationWindow,
  WARMUP_MS,
  withLoad,
} from './migrate-load.js';
import { waitsTable } from './migrate-load-waits.js';
import { type QemuCopyMode, type QemuMirrorOutcome, startQemuExport } from './migrate-qemu.js';
import { log, step } from './migrate-step.js';
import { fixed, markdownTable, medianOf, ratioAgainst } from './migrate-table.js';

/**
 * Section 2, migration under load (issue 3 item 8): fio writes 4 KiB blocks at random, queue
 * depth 16, through the disk's NBD export, a few seconds alone and then while the disk moves;
 * each Ferry method against QEMU's `blockdev-mirror` in both copy modes, the export served by
 * qemu-storage-daemon. Reported: migration time, guest IOPS before and during, the largest write
 * latency before, during and around the switchover (for QEMU, the stall at the pivot: QEMU
 * reports no downtime), and Ferry's own downtime. With the agent driver, also where the guest
 * waits in Ferry's process, before and during each move (migrate-load-waits.ts): for that the
 * agent samples its probes over the load alone for the baseline's length, just before the move,
 * after a pause of fio's warm-up only, so the probes and the IOPS "before" cover the same time.
 */
type LoadCase =
  | { readonly kind: 'ferry'; readonly method: MethodName }
  | { readonly kind: 'qemu'; readonly mode: QemuCopyMode };

const LOAD_CASES: readonly LoadCase[] = [
  { kind: 'ferry', method: 'mirror' },
  { kind: 'ferry', method: 'dbt' },
  { kind: 'ferry', method: 'snapshot' },
  { kind: 'ferry', method: 'sxm' },
  { kind: 'qemu', mode: 'background' },
  { kind: 'qemu', mode: 'write-blocking' },
];

function labelOf(loadCase: LoadCase): string {
  return loadCase.kind === 'ferry' ? `Ferry ${loadCase.method}` : `QEMU mirror ${loadCase.mode}`;
}

interface LoadSample {
  readonly label: string;
  readonly durationMs: number;
  /** Ferry's count, or QEMU's job progress (which counts re-copied data again). */
  readonly bytesCopied: number;
  readonly impact: GuestImpact;
  /** Ferry only: the downtime it reports, the method that finished, its passes. */
  readonly downtimeMs: number | null;
  readonly method: string | null;
  readonly passes: number | null;
  readonly stun: StunBreakdown | null;
  /** Ferry with the agent driver only: where the guest waited in the host. */
  readonly waits: HostWaits | null;
}

interface Fixture {
  readonly dir: string;
  readonly sizeBytes: number;
  readonly ferry: FerryHost;
  /** Ferry's disk `load` is in this datastore now; each move flips it. */
  where: string;
  readonly qemuSource: string;
}

const DISK = 'load';
const TAIL_MS = 2000;

export async function runLoadSection(
  context: BenchContext,
  master: string,
  sizeBytes: number,
): Promise<string> {
  const dir = join(context.dir, 'load');
  await mkdir(dir, { recursive: true });
  const ferry = await startFerryWithTwoStores(context, dir, context.ferryDriver);
  const samples: LoadSample[] = [];
  try {
    const fixture = await prepare(context, dir, master, sizeBytes, ferry);
    for (let run = 1; run <= context.runs; run += 1) {
      const shift = (run - 1) % LOAD_CASES.length;
      for (const loadCase of [...LOAD_CASES.slice(shift), ...LOAD_CASES.slice(0, shift)]) {
        context.stop.throwIfAborted();
        await settle(context);
        const sample = await runCase(context, fixture, loadCase, run);
        samples.push(sample);
        log(
          `load run ${run}/${context.runs}: ${sample.label}: ${fixed(sample.durationMs / 1000, 2)} s, ` +
            `IOPS ${fixed(sample.impact.iopsBefore, 0)} → ${fixed(sample.impact.iopsDuring, 0)}, ` +
            `switch stall ${fixed(sample.impact.latencyMaxAtSwitchMs, 1)} ms` +
            (sample.downtimeMs === null ? '' : `, downtime ${sample.downtimeMs} ms`),
        );
      }
    }
  } finally {
    await ferry.stop();
  }
  return report(context, sizeBytes, samples, ferry.driver);
}

async function prepare(
  context: BenchContext,
  dir: string,
  master: string,
  sizeBytes: number,
  ferry: FerryHost,
): Promise<Fixture> {
  const staged = join(dir, 'ferry-import.raw');
  const qemuSource = join(dir, 'qemu-source.raw');
  await step('copying the load image', context.stepTimeoutMs, async () => {
    await copyImage(master, staged, 'thick', context.stepTimeoutMs);
    await copyImage(master, qemuSource, 'thick', context.stepTimeoutMs);
  });
  await ferry.importDisk(DISK, staged, 'a');
  return { dir, sizeBytes, ferry, where: 'a', qemuSource };
}

async function runCase(
  context: BenchContext,
  fixture: Fixture,
  loadCase: LoadCase,
  run: number,
): Promise<LoadSample> {
  const label = labelOf(loadCase);
  const slug = label.toLowerCase().replaceAll(' ', '-');
  const timing = { baselineMs: context.baselineSeconds * 1000, tailMs: TAIL_MS };
  const loadSpec = (uri: string) => ({
    uri,
    sizeBytes: fixture.sizeBytes,
    rateIops: 0,
    dir: fixture.dir,
    label: `fio-${run}-${slug}`,
    runtimeMaxSeconds: context.baselineSeconds + context.stepTimeoutMs / 1000 + 60,
  });
  if (loadCase.kind === 'ferry') {
    const to = fixture.where === 'a' ? 'b' : 'a';
    const isProbed = fixture.ferry.driver === 'agent';
    const spec = {
      disk: DISK,
      datastore: to,
      method: loadCase.method,
      ...(isProbed ? { waitsBaselineMs: timing.baselineMs } : {}),
    };
    const uri = `${fixture.ferry.nbdUrl}/${DISK}`;
    // The agent samples the baseline itself, just before the move: fio's warm-up is paused here.
    const ferryTiming = isProbed ? { ...timing, baselineMs: WARMUP_MS } : timing;
    const { trace, value: outcome } = await withLoad(loadSpec(uri), ferryTiming, context.stop, () =>
      step(label, context.stepTimeoutMs, () => fixture.ferry.move(spec)),
    );
    checkSucceeded(outcome, label);
    fixture.where = to;
    const switchToMs = outcome.switchoverAtMs ?? outcome.endedAtMs;
    const window: MigrationWindow = {
      startMs: outcome.askedAtMs,
      endMs: outcome.endedAtMs,
      switchFromMs: switchToMs - (outcome.downtimeMs ?? 0),
      switchToMs,
    };
    return {
      label,
      durationMs: outcome.durationMs,
      bytesCopied: outcome.bytesCopied,
      impact: guestImpact(trace, window),
      downtimeMs: outcome.downtimeMs,
      method: outcome.method,
      passes: outcome.passes,
      stun: outcome.stun,
      waits: outcome.waits,
    };
  }
  const qemu = await startQemuExport(fixture.qemuSource, fixture.sizeBytes, fixture.dir);
  const target = join(fixture.dir, 'qemu-target.raw');
  // QEMU's background mirror may never converge under a guest that writes faster than it copies:
  // that is a result (the row says so), not a reason to lose the whole section.
  const limitMs =
    loadCase.mode === 'background'
      ? Math.min(context.stepTimeoutMs, QEMU_BACKGROUND_LIMIT_MS)
      : context.stepTimeoutMs;
  try {
    let loaded: { readonly trace: LoadTrace; readonly value: QemuMirrorOutcome };
    try {
      loaded = await withLoad(loadSpec(qemu.uri), timing, context.stop, () =>
        qemu.mirror(target, loadCase.mode, limitMs),
      );
    } catch (error) {
      if (loadCase.mode !== 'background' || context.stop.aborted) throw error;
      log(`${label}: did not converge within ${limitMs / 1000} s (${String(error)})`);
      return notConverged(label);
    }
    const { trace, value: outcome } = loaded;
    const window: MigrationWindow = {
      startMs: outcome.startedAtMs,
      endMs: outcome.finishedAtMs,
      switchFromMs: outcome.pivotAtMs,
      switchToMs: outcome.finishedAtMs,
    };
    const impact = guestImpact(trace, window);
    return {
      label,
      durationMs: outcome.durationMs,
      bytesCopied: outcome.bytesCopied,
      impact,
      downtimeMs: null,
      method: null,
      passes: null,
      stun: null,
      waits: null,
    };
  } finally {
    await qemu.stop();
    await rm(target, { force: true });
  }
}

/** How long QEMU's background mirror may run before its row says it did not converge. */
const QEMU_BACKGROUND_LIMIT_MS = 120_000;

/** A migration that never finished: no time, no impact to report (the table prints `-`). */
function notConverged(label: string): LoadSample {
  return {
    label,
    durationMs: Number.POSITIVE_INFINITY,
    bytesCopied: Number.NaN,
    impact: {
      iopsBefore: Number.NaN,
      iopsDuring: Number.NaN,
      latencyMaxBeforeMs: Number.NaN,
      latencyMaxDuringMs: Number.NaN,
      latencyMaxAtSwitchMs: Number.NaN,
    },
    downtimeMs: null,
    method: null,
    passes: null,
    stun: null,
    waits: null,
  };
}

const HEADER = [
  'migration',
  'time s',
  'copied',
  'IOPS before',
  'IOPS during',
  'during/before',
  'max lat before ms',
  'max lat during ms',
  'max lat at switch ms',
  'downtime ms',
  'stun drain/copy/flush/commit ms',
  'ended as, passes',
];

/** One table row: the medians of one case's samples. */
function rowFor(loadCase: LoadCase, mine: readonly LoadSample[]): string[] {
  const med = (pick: (s: LoadSample) => number | null): number => medianOf(mine, pick);
  const methods = [...new Set(mine.map((s) => s.method).filter((m) => m !== null))];
  const endedAs =
    loadCase.kind === 'ferry'
      ? `${methods.join('/')}, ${fixed(
          med((s) => s.passes),
          0,
        )}`
      : '-';
  return [
    labelOf(loadCase),
    fixed(med((s) => s.durationMs) / 1000, 2),
    formatSize(Math.round(med((s) => s.bytesCopied))),
    fixed(
      med((s) => s.impact.iopsBefore),
      0,
    ),
    fixed(
      med((s) => s.impact.iopsDuring),
      0,
    ),
    fixed(
      med((s) => s.impact.iopsDuring / s.impact.iopsBefore),
      2,
    ),
    fixed(
      med((s) => s.impact.latencyMaxBeforeMs),
      1,
    ),
    fixed(
      med((s) => s.impact.latencyMaxDuringMs),
      1,
    ),
    fixed(
      med((s) => s.impact.latencyMaxAtSwitchMs),
      1,
    ),
    fixed(
      med((s) => s.downtimeMs),
      1,
    ),
    formatStun(medianStun(mine.map((s) => s.stun))),
    endedAs,
  ];
}

function report(
  context: BenchContext,
  sizeBytes: number,
  samples: readonly LoadSample[],
  driver: string,
): string {
  const of = (label: string) => samples.filter((s) => s.label === label);
  const medianFor = (label: string, pick: (s: LoadSample) => number | null): number =>
    medianOf(of(label), pick);
  const rows = LOAD_CASES.map((loadCase) => rowFor(loadCase, of(labelOf(loadCase))));
  const table = markdownTable(HEADER, rows);
  const mirrorMs = medianFor('Ferry mirror', (s) => s.durationMs);
  const qemuMs = medianFor('QEMU mirror write-blocking', (s) => s.durationMs);
  const iopsRatio = medianFor('Ferry mirror', (s) => s.impact.iopsDuring / s.impact.iopsBefore);
  const downtime = medianFor('Ferry mirror', (s) => s.downtimeMs);
  const atSwitchMs = medianFor('Ferry mirror', (s) => s.impact.latencyMaxAtSwitchMs);
  return [
    `## 2. Migration under load, ${formatSize(sizeBytes)} disk, fio randwrite 4k iodepth 16 over NBD`,
    '',
    `Medians of ${context.runs} run(s); ${context.baselineSeconds} s of load alone before each ` +
      `migration, ${TAIL_MS / 1000} s after; page cache dropped before each: ` +
      `${context.isDropCaches ? 'yes' : 'no'}; Ferry driven through: ${driver}. Time: Ferry's job ` +
      'duration; QEMU from blockdev-mirror to BLOCK_JOB_COMPLETED (target created before). ' +
      'Latencies are the largest of any write completing in the window (fio, 100 ms windows); ' +
      '"at switch" spans the switchover or pivot ± 300 ms. QEMU reports no downtime: its stall is ' +
      'the "at switch" column. The stun breakdown comes with the agent driver only (the job ' +
      'record does not carry it).',
    '',
    table,
    '',
    `- Ferry mirror time / QEMU write-blocking time: ${ratioAgainst(mirrorMs / qemuMs, { atMost: 1 })}`,
    `- Ferry mirror guest IOPS during / before: ${ratioAgainst(iopsRatio, { atLeast: 0.6 })}`,
    `- Ferry mirror downtime ms: ${ratioAgainst(downtime, { atMost: 5 })}`,
    `- Ferry mirror slowest guest write at the switchover, ms: ${ratioAgainst(atSwitchMs, { atMost: 20 })}`,
    ...(samples.some((s) => s.durationMs === Number.POSITIVE_INFINITY)
      ? [
          `- "-" in a QEMU background row: a run did not converge within ${QEMU_BACKGROUND_LIMIT_MS / 1000} s under the guest's writes.`,
        ]
      : []),
    '',
    waitsReport(samples),
  ].join('\n');
}

/** The "where the guest waits" table, for the Ferry samples that carry the host's probes. */
function waitsReport(samples: readonly LoadSample[]): string {
  const labels = LOAD_CASES.filter((c) => c.kind === 'ferry').map(labelOf);
  const probed = samples.flatMap((s) =>
    s.waits === null
      ? []
      : [
          {
            label: s.label,
            waits: s.waits,
            iopsBefore: s.impact.iopsBefore,
            iopsDuring: s.impact.iopsDuring,
          },
        ],
  );
  return waitsTable(labels, probed);
}
