import { fixed, markdownTable, median } from './migrate-table.js';
import type { FlowName, MotionSample } from './vm-motion-guest.js';

/**
 * The report of the VM motion benchmark (issue 8): one row per flow and link with the medians
 * of its runs (the pause also with its worst run), the ratios Ferry / QEMU-only per link against
 * the goals, then every run's figures and the failures.
 *
 * Goals: Ferry's guest-observed pause under 200 ms; Ferry's total time no more than the
 * QEMU-only flow's (ratio ≤ 1).
 */

export const PAUSE_GOAL_MS = 200;

export interface FlowFailure {
  readonly flow: FlowName;
  readonly link: string;
  readonly run: number;
  readonly message: string;
}

const FLOW_LABEL: Record<FlowName, string> = {
  qemu: 'QEMU only (libvirt --copy-storage-all)',
  ferry: 'Ferry (ferry migrate --vm --to-host)',
};

/**
 * QEMU's downtime, NaN when it reads 0: a completed precopy migration always stops the guest for
 * its last round, and QEMU 7.2 reports `completed` before it computes the figure, so a
 * `query-migrate` right at `completed` reads 0 (`zeroDowntimeNote` counts them).
 */
function qemuDowntimeOf(sample: MotionSample): number {
  return sample.qemuDowntimeMs > 0 ? sample.qemuDowntimeMs : Number.NaN;
}

/** A line on the runs whose QEMU downtime read 0, left out of the medians; '' when none. */
export function zeroDowntimeNote(samples: readonly MotionSample[]): string {
  const zero = samples.filter((s) => s.qemuDowntimeMs === 0);
  if (zero.length === 0) return '';
  const flows = [...new Set(zero.map((s) => s.flow))].join(', ');
  return (
    `QEMU downtime read 0 ms in ${zero.length} run(s) (${flows}): QEMU 7.2 reports \`completed\` ` +
    'before it computes the downtime, so a query at `completed` can read 0; those runs are left ' +
    'out of the downtime medians.'
  );
}

function med(samples: readonly MotionSample[], pick: (s: MotionSample) => number): number {
  return median(samples.map(pick));
}

function worst(samples: readonly MotionSample[], pick: (s: MotionSample) => number): number {
  const values = samples.map(pick).filter(Number.isFinite);
  return values.length === 0 ? Number.NaN : Math.max(...values);
}

export function summaryTable(
  samples: readonly MotionSample[],
  links: readonly string[],
  flows: readonly FlowName[],
): string {
  const header = [
    'flow',
    'link',
    'runs',
    'total s',
    'mirror→running s',
    'pause ms (median)',
    'pause ms (max)',
    'largest gap ms',
    'gap before ms',
    'QEMU downtime ms',
    'storage switchover ms',
    'writes/s before',
    'writes/s during',
    'writes/s after',
    'disk check',
  ];
  const rows: string[][] = [];
  for (const link of links) {
    for (const flow of flows) {
      const group = samples.filter((s) => s.flow === flow && s.link === link);
      if (group.length === 0) continue;
      const bad = group.filter((s) => s.mismatches.length > 0).length;
      rows.push([
        FLOW_LABEL[flow],
        link,
        String(group.length),
        fixed(med(group, (s) => s.totalMs) / 1000, 2),
        fixed(med(group, (s) => s.fromMirrorMs) / 1000, 2),
        fixed(
          med(group, (s) => s.pauseMs),
          0,
        ),
        fixed(
          worst(group, (s) => s.pauseMs),
          0,
        ),
        fixed(
          med(group, (s) => s.maxGapMs),
          0,
        ),
        fixed(
          med(group, (s) => s.baselineMaxGapMs),
          0,
        ),
        fixed(med(group, qemuDowntimeOf), 0),
        fixed(
          med(group, (s) => s.storageSwitchoverMs),
          0,
        ),
        fixed(
          med(group, (s) => s.writesPerSecondBefore),
          1,
        ),
        fixed(
          med(group, (s) => s.writesPerSecondDuring),
          1,
        ),
        fixed(
          med(group, (s) => s.writesPerSecondAfter),
          1,
        ),
        bad === 0 ? 'ok' : `${bad} run(s) FAILED`,
      ]);
    }
  }
  return markdownTable(header, rows);
}

export function ratioTable(samples: readonly MotionSample[], links: readonly string[]): string {
  const header = [
    'link',
    'total Ferry/QEMU',
    'pause Ferry/QEMU',
    'QEMU downtime Ferry/QEMU',
    'writes/s during Ferry/QEMU',
    `Ferry pause < ${PAUSE_GOAL_MS} ms`,
    'Ferry total ≤ QEMU',
  ];
  const rows: string[][] = [];
  for (const link of links) {
    const ferry = samples.filter((s) => s.flow === 'ferry' && s.link === link);
    const qemu = samples.filter((s) => s.flow === 'qemu' && s.link === link);
    if (ferry.length === 0 || qemu.length === 0) continue;
    const ratio = (pick: (s: MotionSample) => number): number => med(ferry, pick) / med(qemu, pick);
    const pauseWorst = worst(ferry, (s) => s.pauseMs);
    const total = ratio((s) => s.totalMs);
    rows.push([
      link,
      fixed(total, 2),
      fixed(
        ratio((s) => s.pauseMs),
        2,
      ),
      fixed(ratio(qemuDowntimeOf), 2),
      fixed(
        ratio((s) => s.writesPerSecondDuring),
        2,
      ),
      Number.isFinite(pauseWorst)
        ? `${pauseWorst < PAUSE_GOAL_MS ? 'yes' : 'no'} (worst ${pauseWorst.toFixed(0)} ms)`
        : '-',
      Number.isFinite(total) ? (total <= 1 ? 'yes' : 'no') : '-',
    ]);
  }
  return rows.length === 0 ? '' : markdownTable(header, rows);
}

/** Every run, for the note: the figures behind the medians. */
export function runsTable(samples: readonly (MotionSample & { run: number })[]): string {
  const header = [
    'run',
    'flow',
    'link',
    'total s',
    'pause ms (ended at s)',
    'largest gap ms (ended at s)',
    'gap before ms',
    'first line after running ms',
    'QEMU downtime ms',
    'switchover ms',
    'Ferry pause ms',
    'writes/s before / during / after',
    'writes checked',
    'acks lost on console',
    'disk',
  ];
  const rows = samples.map((s) => [
    String(s.run),
    s.flow,
    s.link,
    fixed(s.totalMs / 1000, 2),
    `${fixed(s.pauseMs, 1)} (${fixed(s.pauseEndMs / 1000, 2)})`,
    `${fixed(s.maxGapMs, 1)} (${fixed(s.maxGapEndMs / 1000, 2)})`,
    fixed(s.baselineMaxGapMs, 1),
    fixed(s.firstLineAfterRunningMs, 0),
    fixed(s.qemuDowntimeMs, 0),
    fixed(s.storageSwitchoverMs, 0),
    fixed(s.reportedPauseMs, 0),
    `${fixed(s.writesPerSecondBefore, 1)} / ${fixed(s.writesPerSecondDuring, 1)} / ${fixed(s.writesPerSecondAfter, 1)}`,
    String(s.verifiedWrites),
    String(s.lostAcks),
    s.mismatches.length === 0 && s.guestProblems.length === 0
      ? 'ok'
      : `${s.mismatches.length} mismatches, ${s.guestProblems.length} guest errors`,
  ]);
  return markdownTable(header, rows);
}

/** The problems worth reading in full: mismatched blocks, the guest's own errors, failures. */
export function problemsText(
  samples: readonly (MotionSample & { run: number })[],
  failures: readonly FlowFailure[],
): string {
  const lines: string[] = [];
  for (const s of samples) {
    for (const m of s.mismatches.slice(0, 5))
      lines.push(`- run ${s.run} ${s.flow} ${s.link}: ${m}`);
    for (const p of s.guestProblems.slice(0, 5))
      lines.push(`- run ${s.run} ${s.flow} ${s.link}: guest said ${p}`);
  }
  for (const f of failures) {
    lines.push(
      `- run ${f.run} ${f.flow} ${f.link} FAILED: ${f.message.split('\n').slice(0, 6).join(' / ')}`,
    );
  }
  return lines.join('\n');
}
