import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { DatastoreInfo } from '../host/agent.js';
import { NAME_HELP } from '../host/names.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatTable } from './table.js';

/** `ferry datastore ...`: add, list, remove. */
export function addDatastoreCommands(program: Command, context: CliContext): void {
  const datastore = program
    .command('datastore')
    .description('add, list and remove datastores (directories where disk images live)');

  datastore
    .command('add')
    .description(
      'register an existing writable directory as a datastore; disks already in it are served',
    )
    .argument('<name>', `datastore name: ${NAME_HELP}`)
    .argument('<path>', 'the directory, a path on the host where ferry serve runs')
    .option('--json', 'print the datastore as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry datastore add fast /mnt/nvme/ferry')
    .action(async (name: string, path: string, options: { json?: boolean }) => {
      const added = await context.api.post<DatastoreInfo>('/v1/datastores', {
        name,
        path: resolve(context.cwd, path),
      });
      if (options.json) return printJson(context, added);
      context.print(`Added datastore ${added.name} at ${added.path} (${describeSpace(added)}).`);
    });

  datastore
    .command('list')
    .alias('ls')
    .description('list datastores with their space and disk count')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean }) => {
      const { datastores } = await context.api.get<{ datastores: DatastoreListEntry[] }>(
        '/v1/datastores',
      );
      if (options.json) return printJson(context, datastores);
      context.print(
        formatTable<DatastoreListEntry>(
          [
            { header: 'NAME', value: (d) => d.name },
            { header: 'CAPACITY', value: (d) => sizeOrDash(d.capacityBytes), align: 'right' },
            { header: 'FREE', value: (d) => sizeOrDash(d.freeBytes), align: 'right' },
            { header: 'DISKS', value: (d) => String(d.diskCount), align: 'right' },
            { header: 'STATE', value: (d) => (d.isAvailable ? 'ok' : 'unavailable') },
            { header: 'CLUSTER', value: (d) => d.cluster ?? '-' },
            { header: 'MAINTENANCE', value: (d) => d.maintenance ?? 'off' },
            { header: 'PATH', value: (d) => d.path },
          ],
          datastores,
        ),
      );
    });

  datastore
    .command('maintenance')
    .description(
      "enter maintenance: every disk (and VM) moves to the rest of the datastore's cluster, " +
        'and it takes no new disks or moves; it is "on" once empty. --exit ends it',
    )
    .argument('<name>', 'datastore name')
    .option('--exit', 'end maintenance: the datastore takes disks again')
    .option('--json', 'print the result as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n  $ ferry datastore maintenance fast1\n  $ ferry job list\n' +
        '  $ ferry datastore list          # MAINTENANCE goes from entering to on\n' +
        '  $ ferry datastore maintenance fast1 --exit',
    )
    .action(async (name: string, options: { exit?: boolean; json?: boolean }) => {
      const path = `/v1/datastores/${encodeURIComponent(name)}/maintenance`;
      if (options.exit) {
        const left = await context.api.request<{ maintenance: string }>('DELETE', path);
        if (options.json) return printJson(context, left);
        return context.print(`Datastore ${name} left maintenance: it takes disks again.`);
      }
      const entered = await context.api.post<MaintenanceReply>(path, {});
      if (options.json) return printJson(context, entered);
      context.print(
        entered.maintenance === 'on'
          ? `Datastore ${name} is in maintenance (it is empty).`
          : `Datastore ${name} is entering maintenance: ${entered.jobs.length} move(s) queued; ` +
              'it is "on" once empty (see ferry datastore list, ferry job list).',
      );
      for (const problem of entered.problems) context.printError(`warning: ${problem}\n`);
    });

  datastore
    .command('rm')
    .alias('remove')
    .description('unregister an empty datastore (its directory is left in place)')
    .argument('<name>', 'datastore name')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      await context.api.delete(`/v1/datastores/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, { removed: name });
      context.print(`Removed datastore ${name} (its directory is left in place).`);
    });
}

/** A listing entry; `cluster` and `maintenance` come from servers with a database. */
type DatastoreListEntry = DatastoreInfo & { cluster?: string | null; maintenance?: string };

interface MaintenanceReply {
  readonly maintenance: 'off' | 'entering' | 'on';
  readonly jobs: readonly unknown[];
  readonly problems: readonly string[];
}

function sizeOrDash(bytes: number | null): string {
  return bytes === null ? '-' : formatSize(bytes);
}

function describeSpace(datastore: DatastoreInfo): string {
  if (!datastore.isAvailable) return 'unavailable';
  return `${sizeOrDash(datastore.freeBytes)} free of ${sizeOrDash(datastore.capacityBytes)}`;
}
