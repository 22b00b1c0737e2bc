import type { HostWaits } from './host-waits.js';
import { LOAD_IODEPTH } from './migrate-load.js';
import { fixed, markdownTable, medianOf } from './migrate-table.js';

/**
 * Section 2's second table (issue 9 item 2): where the guest waits while a Ferry method runs,
 * from the agent host's probes (host-waits.ts) and fio. Each cell is `before → during`, the
 * median over the runs; "before" is the same probes over the guest's load alone, just before
 * the move.
 *
 * fio's mean write latency is Little's law over its IOPS (fio keeps `LOAD_IODEPTH` writes in
 * flight): iodepth / IOPS. Its growth from before to during is the latency the move added; the
 * other columns say where that time may go: a wait for the event loop (paid at each of a
 * write's few hops through it), for the thread pool (each file write is one pool job), or for
 * the range lock (mean over every guest write that took it, waits or not).
 */
export interface WaitsSample {
  readonly label: string;
  readonly waits: HostWaits;
  readonly iopsBefore: number;
  readonly iopsDuring: number;
}

const HEADER = [
  'migration',
  'loop delay p99 ms',
  'loop delay mean ms',
  'pool probe p50 ms',
  'pool probe p99 ms',
  'pool probe mean ms',
  'guest lock waits (of writes)',
  'lock wait ms total',
  'lock wait ms per write',
  'guest in stack ms',
  'source file write ms',
  'target file request ms',
  'fio write lat ms (iodepth/IOPS)',
  'loop busy',
  'loop thread CPU cores',
  'loop CPU µs per write',
  'host CPU cores',
  'machine CPU busy',
];

/** A table of the medians per label, in `labels`' order; empty when no sample has waits. */
export function waitsTable(labels: readonly string[], samples: readonly WaitsSample[]): string {
  const rows = labels
    .map((label) => samples.filter((sample) => sample.label === label))
    .filter((mine) => mine.length > 0)
    .map(rowFor);
  if (rows.length === 0) return '';
  return [
    '### Where the guest waits (agent driver)',
    '',
    'Medians over the runs, `before → during` the move. Loop delay: monitorEventLoopDelay ' +
      '(5 ms resolution). Pool probe: an fstat every 5 ms, submission to callback (its queueing ' +
      'behind other pool jobs, plus the loop delay to run its callback). Lock: the guest ' +
      "mutations' waits for the method's range lock (copy chunks or other guest writes). Guest " +
      "in stack: mean latency of the guest's requests below the migration's Switch (method " +
      'filter, lock, mirrored writes, file writes), during the move. Source file write: mean ' +
      "latency of the guest's writes at the source file (the disk's Stats filter: a pool job " +
      'each and the loop to run its callback), up to the switchover. Target file request: mean ' +
      "latency of the migration's requests to the target file (mirrored writes), during. " +
      'fio latency: ' +
      `${LOAD_IODEPTH} / IOPS (Little's law). Loop busy: eventLoopUtilization, the share of ` +
      'the time the loop ran callbacks; loop thread CPU: the CPU time it got for them, and ' +
      "that per guest write (fio's IOPS). CPU: the host process's CPU time per second " +
      "(cores), and the share of the machine's CPUs not idle (every process).",
    '',
    markdownTable(HEADER, rows),
    '',
  ].join('\n');
}

function rowFor(mine: readonly WaitsSample[]): string[] {
  const med = (pick: (s: WaitsSample) => number | null): number => medianOf(mine, pick);
  const pair = (pick: (s: WaitsSample, when: 'before' | 'during') => number | null, digits = 2) =>
    `${fixed(
      med((s) => pick(s, 'before')),
      digits,
    )} → ${fixed(
      med((s) => pick(s, 'during')),
      digits,
    )}`;
  const windowOf = (s: WaitsSample, when: 'before' | 'during') =>
    when === 'before' ? s.waits.before : s.waits.during;
  const lock = (pick: (s: WaitsSample) => number | undefined) =>
    med((s) => (s.waits.lock === null ? null : (pick(s) ?? null)));
  return [
    mine[0]?.label ?? '-',
    pair((s, when) => windowOf(s, when)?.loopDelay.p99Ms ?? null),
    pair((s, when) => windowOf(s, when)?.loopDelay.meanMs ?? null),
    pair((s, when) => windowOf(s, when)?.poolProbe.p50Ms ?? null),
    pair((s, when) => windowOf(s, when)?.poolProbe.p99Ms ?? null),
    pair((s, when) => windowOf(s, when)?.poolProbe.meanMs ?? null),
    `${fixed(
      lock((s) => s.waits.lock?.waits),
      0,
    )} (of ${fixed(
      lock((s) => s.waits.lock?.acquires),
      0,
    )})`,
    fixed(
      lock((s) => s.waits.lock?.waitMs),
      0,
    ),
    fixed(
      lock((s) => perWrite(s.waits)),
      3,
    ),
    fixed(
      med((s) => s.waits.guestInStack.meanMs),
      3,
    ),
    pair((s, when) =>
      when === 'before'
        ? (s.waits.sourceWrite.before?.meanMs ?? null)
        : s.waits.sourceWrite.during.meanMs,
    ),
    fixed(
      med((s) => (s.waits.targetRequests.operations > 0 ? s.waits.targetRequests.meanMs : null)),
      3,
    ),
    pair((s, when) => (LOAD_IODEPTH / (when === 'before' ? s.iopsBefore : s.iopsDuring)) * 1000),
    pair((s, when) => windowOf(s, when)?.loopUtilization ?? null),
    pair((s, when) => windowOf(s, when)?.loopThreadCores ?? null),
    pair((s, when) => {
      const cores = windowOf(s, when)?.loopThreadCores;
      const iops = when === 'before' ? s.iopsBefore : s.iopsDuring;
      return cores === undefined ? null : (cores / iops) * 1e6;
    }, 1),
    pair((s, when) => windowOf(s, when)?.processCores ?? null),
    pair((s, when) => windowOf(s, when)?.machineBusy ?? null),
  ];
}

function perWrite(waits: HostWaits): number | undefined {
  const { lock } = waits;
  if (lock === null || lock.acquires === 0) return undefined;
  return lock.waitMs / lock.acquires;
}
