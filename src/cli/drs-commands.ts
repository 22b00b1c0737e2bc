import type { Command } from 'commander';
import type { DrsResult, Recommendation } from '../control/drs.js';
import type { JobStatus } from '../control/job-record.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatTable } from './table.js';

/** `ferry drs ...`: Storage DRS recommendations for clusters, and applying them. */
export function addDrsCommands(program: Command, context: CliContext): void {
  const drs = program
    .command('drs')
    .description(
      'Storage DRS: moves that bring each cluster member under its space threshold, relieve ' +
        'datastores whose guest latency is above the latency threshold, and empty datastores ' +
        'entering maintenance',
    )
    .addHelpText(
      'after',
      `
Examples:
  $ ferry drs recommend            # every cluster
  $ ferry drs recommend gold
  $ ferry drs apply gold           # queue them all as migrations
  $ ferry drs apply --id 'gold:disk/web1:fast1:fast2'
  $ ferry job list                 # follow the moves`,
    );

  drs
    .command('recommend')
    .alias('rec')
    .description('list the moves Storage DRS recommends now, with their reason and effect')
    .argument('[cluster]', 'one cluster (default: every cluster)')
    .option('--json', 'print the recommendations as JSON')
    .action(async (cluster: string | undefined, options: { json?: boolean }) => {
      const query = cluster === undefined ? '' : `?cluster=${encodeURIComponent(cluster)}`;
      const result = await context.api.get<DrsResult>(`/v1/drs/recommendations${query}`);
      if (options.json) return printJson(context, result);
      printRecommendations(context, result);
    });

  drs
    .command('apply')
    .description('queue the current recommendations as migrations (see ferry job list)')
    .argument('[cluster]', 'one cluster (default: every cluster)')
    .option(
      '--id <id>',
      'apply only this recommendation (repeatable; ids from ferry drs recommend --json)',
      (id: string, ids: string[] = []) => [...ids, id],
    )
    .option('--json', 'print the jobs as JSON')
    .action(async (cluster: string | undefined, options: { id?: string[]; json?: boolean }) => {
      const { jobs } = await context.api.post<{ jobs: JobStatus[] }>('/v1/drs/apply', {
        ...(cluster === undefined ? {} : { cluster }),
        ...(options.id === undefined ? {} : { ids: options.id }),
      });
      if (options.json) return printJson(context, { jobs });
      if (jobs.length === 0) return context.print('Nothing to apply: no recommendations now.');
      for (const job of jobs) {
        const what = job.vm === null ? `disk ${job.disk}` : `VM ${job.vm}`;
        context.print(`Job ${job.id}: ${what} from ${job.from} to ${job.to} (${job.state}).`);
      }
      context.print('Follow them with `ferry job list` or `ferry job watch ID`.');
    });
}

function printRecommendations(context: CliContext, result: DrsResult): void {
  if (result.recommendations.length === 0) {
    context.print('No recommendations: every cluster is within its thresholds.');
  } else {
    context.print(
      formatTable<Recommendation>(
        [
          { header: 'CLUSTER', value: (r) => r.cluster },
          { header: 'REASON', value: (r) => r.reason },
          { header: 'MOVE', value: (r) => (r.vm === null ? `disk ${r.disk}` : `VM ${r.vm}`) },
          { header: 'SIZE', value: (r) => formatSize(r.sizeBytes), align: 'right' },
          { header: 'FROM', value: (r) => `${r.from} ${effectOf(r.effect.from)}` },
          { header: 'TO', value: (r) => `${r.to} ${effectOf(r.effect.to)}` },
        ],
        result.recommendations,
      ),
    );
    for (const one of result.recommendations) context.print(`- ${one.message}`);
  }
  for (const problem of result.problems) context.printError(`warning: ${problem}\n`);
}

function effectOf(effect: { usedFractionBefore: number; usedFractionAfter: number }): string {
  const pct = (fraction: number): string => `${(fraction * 100).toFixed(0)}%`;
  return `${pct(effect.usedFractionBefore)}→${pct(effect.usedFractionAfter)}`;
}
