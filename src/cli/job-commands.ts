import type { Command } from 'commander';
import type { JobRecord, JobStatus } from '../control/job-record.js';
import { isTerminal } from '../control/job-states.js';
import { formatSpeed, SPEED_HELP } from '../control/speed.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { followJob, reportOutcome } from './job-follow.js';
import {
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
    .description('list running jobs and the latest finished ones')
    .option('--json', 'print the list as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry job list --json')
    .action(async (options: { json?: boolean }) => {
      const { jobs } = await context.api.get<{ jobs: JobStatus[] }>('/v1/jobs');
      if (options.json) return printJson(context, jobs);
      if (jobs.length === 0)
        return context.print('No jobs. Start one with: ferry migrate DISK --to DATASTORE');
      context.print(
        formatTable<JobStatus>(
          [
            { header: 'ID', value: (j) => j.id },
            { header: 'DISK', value: (j) => j.disk },
            { header: 'FROM', value: (j) => j.from },
            { header: 'TO', value: (j) => j.to },
            { header: 'METHOD', value: (j) => j.method },
            { header: 'STATE', value: (j) => j.state },
            { header: 'DONE', value: (j) => `${percentDone(j)}%`, align: 'right' },
            { header: 'COPIED', value: (j) => formatAmount(j) },
            { header: 'STARTED', value: (j) => formatClock(j.startedAt) },
            { header: 'DURATION', value: (j) => formatDuration(j.durationMs), align: 'right' },
          ],
          jobs,
        ),
      );
    });
}

function addShow(job: Command, context: CliContext): void {
  job
    .command('show')
    .description('show one job, with its latest events')
    .argument('<id>', 'job id (see ferry job list)')
    .option('--json', 'print the job as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry job show move-1')
    .action(async (id: string, options: { json?: boolean }) => {
      const record = await context.api.get<JobRecord>(jobPath(id));
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
    .description('stop a running job; the disk stays on (goes back to) its source datastore')
    .argument('<id>', 'job id')
    .option('--json', 'print the job as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry job cancel move-1 && ferry job watch move-1')
    .action(async (id: string, options: { json?: boolean }) => {
      const record = await context.api.post<JobRecord>(jobPath(id, '/cancel'), {});
      if (options.json) return printJson(context, record);
      context.print(
        `Cancelling job ${record.id}: ${describeSubject(record)} stays on datastore ${record.from} ` +
          `once the copy has stopped. Follow it: ferry job watch ${record.id}`,
      );
    });
}

function addSpeed(job: Command, context: CliContext): void {
  job
    .command('speed')
    .description('change the copy rate of a running job, at once')
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
      context.print(`Job ${record.id} now copies ${limit}.`);
    });
}

function jobFields(record: JobRecord): [string, string][] {
  const method =
    record.method === record.requestedMethod
      ? record.method
      : `${record.method} (asked for ${record.requestedMethod})`;
  return [
    ['id', record.id],
    record.vm === null
      ? ['disk', `${record.disk} (${formatSize(record.sizeBytes)})`]
      : ['vm', `${record.vm}: disks ${record.disks.join(', ')} (${formatSize(record.sizeBytes)})`],
    ['move', `${record.from} -> ${record.to}`],
    ['method', method],
    ['state', record.state],
    ['progress', formatProgress(record)],
    ['activity', formatActivity(record)],
    ['copied', `${formatSize(record.bytesCopied)} in ${record.passes} pass(es)`],
    ['speed', formatSpeed(record.speedBytesPerSecond)],
    ['started', record.startedAt],
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
