import type { Command } from 'commander';
import type { JobQueueStatus, JobRecord, JobStatus } from '../control/job-record.js';
import { isTerminal } from '../control/job-states.js';
import type { RemoteJobStatus, UnreachableJob } from '../control/remote-jobs.js';
import { formatSpeed, SPEED_HELP } from '../control/speed.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { followJob, reportOutcome } from './job-follow.js';
import {
  describeSource,
  describeSubject,
  formatActivity,
  formatAmount,
  formatClock,
  formatDuration,
  formatRate,
  percentDone,
} from './job-format.js';
import { parseSpeedOption } from './migrate-command.js';
import { formatFields, formatTable } from './table.js';

/** `ferry job ...`: list, show, watch, cancel, speed. */
export function addJobCommands(
  program: Command,
  context: CliContext,
  setExitCode: (code: number) => void,
): void {
  const job = program
    .command('job')
    .description('list, show, follow, cancel and re-speed jobs (disk moves)')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ ferry job list\n' +
        '  $ ferry job watch move-1\n' +
        '  $ ferry job speed move-1 50M\n' +
        '  $ ferry job cancel move-1',
    );
  addList(job, context);
  addShow(job, context);
  addWatch(job, context, setExitCode);
  addCancel(job, context);
  addSpeed(job, context);
}

function jobPath(id: string, verb = ''): string {
  return `/v1/jobs/${encodeURIComponent(id)}${verb}`;
}

function addList(job: Command, context: CliContext): void {
  job
    .command('list')
    .alias('ls')
    .description('list queued and running jobs and the latest finished ones')
    .option('--json', 'print the list as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry job list --json')
    .action(async (options: { json?: boolean }) => {
      const { jobs } = await context.api.get<{ jobs: ListedJob[] }>('/v1/jobs');
      if (options.json) return printJson(context, jobs);
      if (jobs.length === 0)
        return context.print('No jobs. Start one with: ferry migrate DISK --to DATASTORE');
      const known = (show: (j: JobStatus) => string) => (j: ListedJob) =>
        isUnanswered(j) ? '-' : show(j);
      context.print(
        formatTable<ListedJob>(
          [
            { header: 'ID', value: (j) => j.id },
            { header: 'DISK', value: (j) => j.disk },
            { header: 'FROM', value: listedSource },
            { header: 'TO', value: (j) => j.to },
            { header: 'METHOD', value: known((j) => j.method) },
            { header: 'STATE', value: listedState },
            { header: 'DONE', value: (j) => `${percentDone(j)}%`, align: 'right' },
            { header: 'COPIED', value: (j) => formatAmount(j) },
            {
              header: 'STARTED',
              value: known((j) => (j.state === 'queued' ? '-' : formatClock(j.startedAt))),
            },
            {
              header: 'DURATION',
              value: known((j) => formatDuration(j.durationMs)),
              align: 'right',
            },
          ],
          jobs,
        ),
      );
      for (const j of jobs) {
        const place = queueOf(j);
        if (place === null) continue;
        context.print(`job ${j.id} is queued #${place.position}: waiting for ${place.waitingFor}`);
      }
      for (const j of jobs.filter(isUnanswered)) {
        context.print(`job ${j.id}: only what this host receives is known: ${j.error.message}`);
      }
    });
}

/**
 * A row of `GET /v1/jobs`: a job of this host, one another host runs (its disk arrives here),
 * or, when that host did not answer, what this host knows of the move.
 */
type ListedJob = JobStatus | RemoteJobStatus | UnreachableJob;

function isUnanswered(job: ListedJob): job is UnreachableJob {
  return 'sourceHost' in job;
}

/** A queued job's place, when the row has one (a peer of an older version sends none). */
function queueOf(job: ListedJob): JobQueueStatus | null {
  return 'queue' in job && job.queue !== undefined ? job.queue : null;
}

/** `running`; `queued #2` for a queued job, 1 being the next to start. */
function listedState(job: ListedJob): string {
  const place = queueOf(job);
  return place === null ? job.state : `${job.state} #${place.position}`;
}

/** `local` here; `a:local` for a job host a runs; `a:?` when host a did not say. */
function listedSource(job: ListedJob): string {
  if (isUnanswered(job)) return `${job.runsOn ?? job.sourceHost}:?`;
  return 'runsOn' in job ? `${job.runsOn}:${job.from}` : job.from;
}

function addShow(job: Command, context: CliContext): void {
  job
    .command('show')
    .description('show one job, with its latest events')
    .argument('<id>', 'job id (see ferry job list)')
    .option('--json', 'print the job as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry job show move-1')
    .action(async (id: string, options: { json?: boolean }) => {
      const record = await context.api.get<ShownJob>(jobPath(id));
      if (options.json) return printJson(context, record);
      context.print(formatFields(jobFields(record)));
      context.print('events:');
      for (const entry of record.events) {
        context.print(`  ${formatClock(entry.time)} ${entry.message}`);
      }
    });
}

function addWatch(job: Command, context: CliContext, setExitCode: (code: number) => void): void {
  job
    .command('watch')
    .description('follow a job to its end, as ferry migrate does (Ctrl-C stops following only)')
    .argument('<id>', 'job id')
    .option('--json', 'print the final job as JSON')
    .addHelpText(
      'after',
      '\nExample:\n  $ ferry job watch move-1\n\n' +
        'Exit codes: 0 the job succeeded, 1 it failed or was cancelled, 130 Ctrl-C.',
    )
    .action(async (id: string, options: { json?: boolean }) => {
      const record = await context.api.get<JobRecord>(jobPath(id));
      setExitCode(reportOutcome(context, await followJob(context, record), options.json === true));
    });
}

function addCancel(job: Command, context: CliContext): void {
  job
    .command('cancel')
    .description(
      'stop a running job, or drop a queued one; the disk stays on (goes back to) its source datastore',
    )
    .argument('<id>', 'job id')
    .option('--json', 'print the job as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry job cancel move-1 && ferry job watch move-1')
    .action(async (id: string, options: { json?: boolean }) => {
      const record = await context.api.post<ShownJob>(jobPath(id, '/cancel'), {});
      if (options.json) return printJson(context, record);
      if (record.state === 'cancelled') {
        return context.print(
          `Cancelled job ${record.id} before it started: ${describeSubject(record)} stays on ` +
            `${describeSource(record)}.`,
        );
      }
      context.print(
        `Cancelling job ${record.id}: ${describeSubject(record)} stays on ${describeSource(record)} ` +
          `once the copy has stopped. Follow it: ferry job watch ${record.id}`,
      );
    });
}

function addSpeed(job: Command, context: CliContext): void {
  job
    .command('speed')
    .description('change the copy rate of a running job at once, or of a queued one for its start')
    .argument('<id>', 'job id')
    .argument('<speed>', SPEED_HELP, parseSpeedOption)
    .option('--json', 'print the job as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  $ ferry job speed move-1 50M\n  $ ferry job speed move-1 0',
    )
    .action(async (id: string, speed: number, options: { json?: boolean }) => {
      const record = await context.api.post<JobRecord>(jobPath(id, '/speed'), { speed });
      if (options.json) return printJson(context, record);
      const limit =
        record.speedBytesPerSecond === 0
          ? 'without a limit'
          : `at up to ${formatSpeed(record.speedBytesPerSecond)}`;
      const when = record.state === 'queued' ? 'will copy, once it starts,' : 'now copies';
      context.print(`Job ${record.id} ${when} ${limit}.`);
    });
}

/** A job's record; `runsOn` names the host that runs it when that is not this one. */
type ShownJob = JobRecord & { readonly runsOn?: string };

function jobFields(record: ShownJob): [string, string][] {
  const method =
    record.method === record.requestedMethod
      ? record.method
      : `${record.method} (asked for ${record.requestedMethod})`;
  const host: [string, string][] =
    record.runsOn === undefined
      ? []
      : [['host', `runs on host ${record.runsOn}; this host receives the disk`]];
  return [
    ['id', record.id],
    ...host,
    record.vm === null
      ? ['disk', `${record.disk} (${formatSize(record.sizeBytes)})`]
      : ['vm', `${record.vm}: disks ${record.disks.join(', ')} (${formatSize(record.sizeBytes)})`],
    ['move', `${record.from} -> ${record.to}`],
    ['method', method],
    ['state', record.state],
    ...(record.queue === null || record.queue === undefined
      ? []
      : [
          ['queue', `#${record.queue.position}: waiting for ${record.queue.waitingFor}`] satisfies [
            string,
            string,
          ],
        ]),
    ['move id', record.moveId ?? '-'],
    ['progress', formatProgress(record)],
    ['activity', formatActivity(record)],
    ['copied', `${formatSize(record.bytesCopied)} in ${record.passes} pass(es)`],
    ['speed', formatSpeed(record.speedBytesPerSecond)],
    ['started', record.state === 'queued' ? '-' : record.startedAt],
    ['finished', record.finishedAt ?? '-'],
    ['duration', formatDuration(record.durationMs)],
    ['downtime', record.downtimeMs === null ? '-' : formatDuration(record.downtimeMs)],
    ['error', record.error === null ? '-' : `${record.error.message} (${record.error.code})`],
    ['allowed', record.allowed.length === 0 ? '-' : record.allowed.join(', ')],
  ];
}

/** A finished job's rate and ETA are history, not news: only a running one shows them. */
function formatProgress(record: JobRecord): string {
  const amount = `${percentDone(record)}% ${formatAmount(record)}`;
  return isTerminal(record.state) ? amount : `${amount} ${formatRate(record)}`;
}
