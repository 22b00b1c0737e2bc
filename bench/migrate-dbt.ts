import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
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
import { guestImpact, withLoad } from './migrate-load.js';
import { log, step } from './migrate-step.js';
import { fixed, markdownTable, medianOf } from './migrate-table.js';

/**
 * Section 3, dbt convergence (issue 3 item 8): how many passes dbt needs, and how much is left
 * dirty for the switchover, against the guest's write rate (fio 4 KiB random writes capped at a
 * rate, or not at all), with and without hot-block avoidance. The API takes no method tuning, so
 * this section drives Ferry through the `agent` driver (migrate-ferry-agent.ts).
 */
const RATES_IOPS = [500, 2000, 8000, 0] as const;
const HOT_SETTINGS = [true, false] as const;

interface DbtCase {
  /** fio's cap; 0: uncapped. */
  readonly rateIops: number;
  readonly isHotBlockAvoidance: boolean;
}

const DBT_CASES: readonly DbtCase[] = RATES_IOPS.flatMap((rateIops) =>
  HOT_SETTINGS.map((isHotBlockAvoidance) => ({ rateIops, isHotBlockAvoidance })),
);
const DISK = 'dbt';
const TAIL_MS = 1000;

interface DbtSample {
  readonly rateIops: number;
  readonly isHotBlockAvoidance: boolean;
  readonly iopsDuring: number;
  readonly passes: number;
  readonly dirtyAtSwitchoverBytes: number | null;
  /** dbt, or mirror when it did not converge. */
  readonly method: string;
  readonly downtimeMs: number | null;
  readonly durationMs: number;
  readonly stun: StunBreakdown | null;
}

export async function runDbtSection(
  context: BenchContext,
  master: string,
  sizeBytes: number,
): Promise<string> {
  const dir = join(context.dir, 'dbt');
  await mkdir(dir, { recursive: true });
  const ferry = await startFerryWithTwoStores(context, dir, 'agent');
  const samples: DbtSample[] = [];
  try {
    const staged = join(dir, 'import.raw');
    await step('copying the dbt image', context.stepTimeoutMs, () =>
      copyImage(master, staged, 'thick', context.stepTimeoutMs),
    );
    await ferry.importDisk(DISK, staged, 'a');
    const fixture: Fixture = { ferry, dir, sizeBytes, place: { where: 'a' } };
    for (let run = 1; run <= context.runs; run += 1) {
      for (const dbtCase of DBT_CASES) {
        context.stop.throwIfAborted();
        await settle(context);
        const sample = await runCase(context, fixture, dbtCase, run);
        samples.push(sample);
        log(
          `dbt run ${run}/${context.runs}: ${describeCase(dbtCase)}: ${sample.passes} passes, ` +
            `${sizeOrDash(sample.dirtyAtSwitchoverBytes ?? Number.NaN)} at switchover, ended as ` +
            `${sample.method}, downtime ${sample.downtimeMs} ms (${formatStun(sample.stun)})`,
        );
      }
    }
  } finally {
    await ferry.stop();
  }
  return report(context, sizeBytes, samples);
}

interface Fixture {
  readonly ferry: FerryHost;
  readonly dir: string;
  readonly sizeBytes: number;
  readonly place: { where: string };
}

async function runCase(
  context: BenchContext,
  fixture: Fixture,
  dbtCase: DbtCase,
  run: number,
): Promise<DbtSample> {
  const { rateIops, isHotBlockAvoidance } = dbtCase;
  const to = fixture.place.where === 'a' ? 'b' : 'a';
  const what = `dbt, ${describeCase(dbtCase)}`;
  const loadSpec = {
    uri: `${fixture.ferry.nbdUrl}/${DISK}`,
    sizeBytes: fixture.sizeBytes,
    rateIops,
    dir: fixture.dir,
    label: `fio-${run}-${rateIops}-${isHotBlockAvoidance ? 'hot' : 'cold'}`,
    runtimeMaxSeconds: context.baselineSeconds + context.stepTimeoutMs / 1000 + 60,
  };
  const timing = { baselineMs: context.baselineSeconds * 1000, tailMs: TAIL_MS };
  const { trace, value: outcome } = await withLoad(loadSpec, timing, context.stop, () =>
    step(what, context.stepTimeoutMs, () =>
      fixture.ferry.move({
        disk: DISK,
        datastore: to,
        method: 'dbt',
        tuning: { isHotBlockAvoidance },
      }),
    ),
  );
  checkSucceeded(outcome, what);
  fixture.place.where = to;
  const switchToMs = outcome.switchoverAtMs ?? outcome.endedAtMs;
  const impact = guestImpact(trace, {
    startMs: outcome.askedAtMs,
    endMs: outcome.endedAtMs,
    switchFromMs: switchToMs - (outcome.downtimeMs ?? 0),
    switchToMs,
  });
  return {
    rateIops,
    isHotBlockAvoidance,
    iopsDuring: impact.iopsDuring,
    passes: outcome.passes,
    dirtyAtSwitchoverBytes: outcome.dirtyAtSwitchoverBytes,
    method: outcome.method,
    downtimeMs: outcome.downtimeMs,
    durationMs: outcome.durationMs,
    stun: outcome.stun,
  };
}

function sizeOrDash(bytes: number): string {
  return Number.isFinite(bytes) ? formatSize(Math.round(bytes)) : '-';
}

function describeCase(dbtCase: DbtCase): string {
  const hot = dbtCase.isHotBlockAvoidance ? 'on' : 'off';
  return `guest rate ${rateName(dbtCase.rateIops)} IOPS, hot-block avoidance ${hot}`;
}

function rateName(rateIops: number): string {
  return rateIops === 0 ? 'unlimited' : String(rateIops);
}

const HEADER = [
  'guest rate IOPS',
  'IOPS during',
  'hot-block avoidance',
  'passes',
  'dirty at switchover',
  'ended as',
  'downtime ms',
  'stun drain/copy/flush/commit ms',
  'time s',
];

/** One table row: the medians of one rate and setting's samples. */
function rowFor(dbtCase: DbtCase, mine: readonly DbtSample[]): string[] {
  const med = (pick: (s: DbtSample) => number | null): number => medianOf(mine, pick);
  const endedAs = [...new Set(mine.map((s) => s.method))]
    .map((method) => `${method} ${mine.filter((s) => s.method === method).length}/${mine.length}`)
    .join(', ');
  return [
    rateName(dbtCase.rateIops),
    fixed(
      med((s) => s.iopsDuring),
      0,
    ),
    dbtCase.isHotBlockAvoidance ? 'on' : 'off',
    fixed(
      med((s) => s.passes),
      0,
    ),
    sizeOrDash(med((s) => s.dirtyAtSwitchoverBytes)),
    endedAs,
    fixed(
      med((s) => s.downtimeMs),
      1,
    ),
    formatStun(medianStun(mine.map((s) => s.stun))),
    fixed(med((s) => s.durationMs) / 1000, 2),
  ];
}

function report(context: BenchContext, sizeBytes: number, samples: readonly DbtSample[]): string {
  const rows = DBT_CASES.map((dbtCase) =>
    rowFor(
      dbtCase,
      samples.filter(
        (s) =>
          s.rateIops === dbtCase.rateIops && s.isHotBlockAvoidance === dbtCase.isHotBlockAvoidance,
      ),
    ),
  );
  const table = markdownTable(HEADER, rows);
  return [
    `## 3. dbt convergence, ${formatSize(sizeBytes)} disk, fio randwrite 4k iodepth 16 at a capped rate`,
    '',
    `Medians of ${context.runs} run(s); default tuning (downtime target 100 ms, at most 8 passes ` +
      'per convergence), hot-block avoidance switched per row; Ferry driven through: agent (the ' +
      'API takes no tuning). "Dirty at switchover" is what the method still held when the ' +
      "switchover began (its final copy, plus writes during the runner's pre-flush).",
    '',
    table,
    '',
  ].join('\n');
}
