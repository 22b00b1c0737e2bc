import { type Command, InvalidArgumentError, Option } from 'commander';
import type { ClusterView } from '../control/datastore-usage.js';
import { NAME_HELP } from '../host/names.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatTable } from './table.js';

/** `ferry cluster ...`: datastore clusters for Storage DRS and initial placement. */
export function addClusterCommands(program: Command, context: CliContext): void {
  const cluster = program
    .command('cluster')
    .description(
      'group datastores into clusters: Storage DRS balances their space and latency, and new ' +
        'disks created "on" a cluster go to its best member',
    )
    .addHelpText(
      'after',
      `
Examples:
  $ ferry cluster create gold --datastore fast1 --datastore fast2 --datastore fast3
  $ ferry cluster set gold --space-threshold 70% --automation automatic --interval 600
  $ ferry cluster capacity fast1 100G      # datastores sharing one file system
  $ ferry disk create web1 --size 20G --datastore gold
  $ ferry drs recommend gold`,
    );

  withSettings(
    cluster
      .command('create')
      .description('create a cluster of datastores (each in at most one cluster)')
      .argument('<name>', `cluster name: ${NAME_HELP}`)
      .option('--datastore <name>', 'a member datastore (repeat it for each)', collectName)
      .option('--datastores <list>', 'member datastores, comma-separated', collectList),
  )
    .option('--json', 'print the cluster as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  $ ferry cluster create gold --datastore fast1 --datastore fast2' +
        '\n  $ ferry cluster create gold --datastores fast1,fast2 --space-threshold 75%',
    )
    .action(async (name: string, options: SettingsOptions & MemberOptions, command: Command) => {
      const datastores = [...(options.datastore ?? []), ...(options.datastores ?? [])];
      if (datastores.length === 0) {
        command.error(
          'error: name the datastores of the cluster: --datastore A --datastore B (or --datastores A,B)',
          { exitCode: 2 },
        );
      }
      const created = await context.api.post<ClusterView>('/v1/clusters', {
        name,
        datastores,
        ...settingsOf(options),
      });
      if (options.json) return printJson(context, created);
      context.print(`Created cluster ${created.name}: ${describeCluster(created)}.`);
    });

  cluster
    .command('list')
    .alias('ls')
    .description('list clusters with their members, usage and thresholds')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean }) => {
      const { clusters } = await context.api.get<{ clusters: ClusterView[] }>('/v1/clusters');
      if (options.json) return printJson(context, clusters);
      context.print(
        formatTable<ClusterView>(
          [
            { header: 'NAME', value: (c) => c.name },
            { header: 'DATASTORES', value: (c) => c.datastores.join(',') },
            { header: 'USED', value: (c) => usedOf(c), align: 'right' },
            { header: 'SPACE MAX', value: (c) => percent(c.spaceThreshold), align: 'right' },
            { header: 'LATENCY', value: (c) => latencyOf(c.latencyMs), align: 'right' },
            { header: 'LATENCY MAX', value: (c) => `${c.latencyThresholdMs} ms`, align: 'right' },
            { header: 'AUTOMATION', value: (c) => automationOf(c) },
          ],
          clusters,
        ),
      );
    });

  cluster
    .command('show')
    .description('show one cluster')
    .argument('<name>', 'cluster name')
    .option('--json', 'print the cluster as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const shown = await context.api.get<ClusterView>(`/v1/clusters/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, shown);
      context.print(`Cluster ${shown.name}: ${describeCluster(shown)}.`);
    });

  withSettings(
    cluster
      .command('set')
      .description("change a cluster's thresholds, automation or members")
      .argument('<name>', 'cluster name')
      .option('--datastores <list>', 'replace its datastores, comma-separated', parseList),
  )
    .option('--json', 'print the cluster as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  $ ferry cluster set gold --latency-threshold 20\n' +
        '  $ ferry cluster set gold --automation manual\n' +
        '  $ ferry cluster set gold --datastores fast1,fast2,fast4',
    )
    .action(async (name: string, options: SettingsOptions & { datastores?: string[] }) => {
      const body = {
        ...settingsOf(options),
        ...(options.datastores === undefined ? {} : { datastores: options.datastores }),
      };
      if (Object.keys(body).length === 0) {
        throw new InvalidArgumentError(
          'nothing to change: give at least one option (see ferry cluster set --help)',
        );
      }
      const changed = await context.api.request<ClusterView>(
        'PATCH',
        `/v1/clusters/${encodeURIComponent(name)}`,
        body,
      );
      if (options.json) return printJson(context, changed);
      context.print(`Cluster ${changed.name}: ${describeCluster(changed)}.`);
    });

  cluster
    .command('rm')
    .alias('remove')
    .description('remove a cluster (its datastores and disks stay as they are)')
    .argument('<name>', 'cluster name')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      await context.api.delete(`/v1/clusters/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, { removed: name });
      context.print(`Removed cluster ${name}.`);
    });

  cluster
    .command('capacity')
    .description(
      'set the capacity Storage DRS counts for a datastore; its used space is then the size of ' +
        'the disks on it. For datastores that share a file system (their free space is the same)',
    )
    .argument('<datastore>', 'datastore name')
    .argument('[size]', 'capacity such as 100G (powers of 1024)')
    .option('--clear', "count the file system's capacity and free space again")
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  $ ferry cluster capacity fast1 100G\n  $ ferry cluster capacity fast1 --clear',
    )
    .action(
      async (
        datastore: string,
        size: string | undefined,
        options: { clear?: boolean; json?: boolean },
      ) => {
        const path = `/v1/datastores/${encodeURIComponent(datastore)}/capacity`;
        if (options.clear) {
          await context.api.delete(path);
          if (options.json) return printJson(context, { name: datastore, capacityBytes: null });
          return context.print(`Storage DRS counts the file system of ${datastore} again.`);
        }
        if (size === undefined) {
          throw new InvalidArgumentError('give a size such as 100G, or --clear');
        }
        const set = await context.api.request<{ capacityBytes: number }>('PUT', path, {
          capacity: size,
        });
        if (options.json) return printJson(context, set);
        context.print(`Storage DRS counts ${formatSize(set.capacityBytes)} for ${datastore}.`);
      },
    );
}

interface SettingsOptions {
  spaceThreshold?: number;
  latencyThreshold?: number;
  automation?: 'manual' | 'automatic';
  interval?: number;
  keepVmDisksTogether?: boolean;
  json?: boolean;
}

function withSettings(command: Command): Command {
  return command
    .option(
      '--space-threshold <fraction>',
      'move disks off a member above this much used space: 80% or 0.8 (default 80%)',
      parseThreshold,
    )
    .option(
      '--latency-threshold <ms>',
      'move load off a member whose guest latency (mean over 60 s) is above this (default 15)',
      parsePositive,
    )
    .addOption(
      new Option(
        '--automation <mode>',
        'manual: recommend only; automatic: apply on the interval',
      ).choices(['manual', 'automatic']),
    )
    .option('--interval <seconds>', 'how often automatic mode applies (default 300)', parseInteger)
    .option('--keep-vm-disks-together', "move a VM's disks together, as the VM (the default)")
    .option('--no-keep-vm-disks-together', "let DRS move a VM's disks one by one");
}

function settingsOf(options: SettingsOptions): Record<string, unknown> {
  return {
    ...(options.spaceThreshold === undefined ? {} : { spaceThreshold: options.spaceThreshold }),
    ...(options.latencyThreshold === undefined
      ? {}
      : { latencyThresholdMs: options.latencyThreshold }),
    ...(options.automation === undefined ? {} : { automation: options.automation }),
    ...(options.interval === undefined ? {} : { intervalSeconds: options.interval }),
    ...(options.keepVmDisksTogether === undefined
      ? {}
      : { keepVmDisksTogether: options.keepVmDisksTogether }),
  };
}

interface MemberOptions {
  readonly datastore?: string[];
  readonly datastores?: string[];
}

function collectName(name: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), name];
}

function collectList(text: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), ...parseList(text)];
}

function parseList(text: string): string[] {
  const names = text
    .split(',')
    .map((name) => name.trim())
    .filter((name) => name !== '');
  if (names.length === 0) throw new InvalidArgumentError('name at least one datastore: a,b,c');
  return names;
}

/** `80%`, `80` or `0.8` → 0.8. */
export function parseThreshold(text: string): number {
  const isPercent = text.trim().endsWith('%');
  const value = Number(isPercent ? text.trim().slice(0, -1) : text);
  const fraction = isPercent || value > 1 ? value / 100 : value;
  if (!Number.isFinite(fraction) || fraction <= 0 || fraction > 1) {
    throw new InvalidArgumentError(`${text} is not a threshold: use a percentage such as 80%`);
  }
  return fraction;
}

function parsePositive(text: string): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value <= 0) {
    throw new InvalidArgumentError(`${text} is not a positive number`);
  }
  return value;
}

function parseInteger(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${text} is not a whole number of seconds (at least 1)`);
  }
  return value;
}

function describeCluster(cluster: ClusterView): string {
  return (
    `${cluster.datastores.join(', ')}; ${usedOf(cluster)} used; moves disks above ` +
    `${percent(cluster.spaceThreshold)} used or ${cluster.latencyThresholdMs} ms guest latency; ` +
    `${automationOf(cluster)}; ` +
    (cluster.keepVmDisksTogether ? "a VM's disks move together" : "a VM's disks move one by one")
  );
}

function usedOf(cluster: ClusterView): string {
  if (cluster.capacityBytes <= 0) return '-';
  return `${formatSize(cluster.usedBytes)} of ${formatSize(cluster.capacityBytes)} (${percent(cluster.usedBytes / cluster.capacityBytes)})`;
}

function automationOf(cluster: ClusterView): string {
  return cluster.automation === 'manual'
    ? 'manual'
    : `automatic every ${cluster.intervalSeconds} s`;
}

function latencyOf(ms: number | null): string {
  return ms === null ? '-' : `${ms.toFixed(1)} ms`;
}

function percent(fraction: number): string {
  return `${(fraction * 100).toFixed(0)}%`;
}
