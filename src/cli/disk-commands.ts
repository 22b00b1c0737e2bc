import { resolve } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { DiskView } from '../api/disk-view.js';
import type { StatsSnapshot } from '../block/stats.js';
import { NAME_HELP } from '../host/names.js';
import { errorMessageOf } from '../util/errors.js';
import { formatSize, parseSize, SIZE_HELP } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatFields, formatTable } from './table.js';

/** `ferry disk ...`: create, import, list, show, remove, stats. */
export function addDiskCommands(program: Command, context: CliContext): void {
  const disk = program
    .command('disk')
    .description('create, import, list, show and remove disks (each is served as an NBD export)');
  addCreate(disk, context);
  addImport(disk, context);
  addList(disk, context);
  addShow(disk, context);
  addStats(disk, context);
  addRemove(disk, context);
}

function addCreate(disk: Command, context: CliContext): void {
  disk
    .command('create')
    .description('create an empty disk and serve it; prints the NBD URI to connect to')
    .argument('<name>', `disk name, also the NBD export name: ${NAME_HELP}`)
    .requiredOption('--size <size>', SIZE_HELP, parseSizeOption)
    .option(
      '--datastore <name>',
      'where to create it: a datastore, or a cluster (its member with the most free space under ' +
        'the threshold); default: local, or the only datastore',
    )
    .option('--thin', 'allocate space as the guest writes (the default)')
    .addOption(
      new Option(
        '--thick',
        'allocate every block now, so guest writes never fail for lack of space',
      ).conflicts('thin'),
    )
    .option('--json', 'print the disk as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry disk create vm1 --size 10G --thick')
    .action(async (name: string, options: CreateOptions) => {
      const created = await context.api.post<DiskView>('/v1/disks', {
        name,
        size: options.size,
        provisioning: options.thick ? 'thick' : 'thin',
        ...(options.datastore === undefined ? {} : { datastore: options.datastore }),
      });
      if (options.json) return printJson(context, created);
      context.print(`Created disk ${created.name}: ${describe(created)}.`);
      printConnectHint(context, created);
    });
}

function addImport(disk: Command, context: CliContext): void {
  disk
    .command('import')
    .description(
      'adopt an existing raw image as a disk: the file is moved into the datastore (it must be ' +
        'on the same file system; Ferry does not copy it)',
    )
    .argument('<name>', `disk name: ${NAME_HELP}`)
    .argument('<file>', 'the raw image, a path on the host where ferry serve runs')
    .option('--datastore <name>', 'where to put it (default: local, or the only datastore)')
    .option('--json', 'print the disk as JSON')
    .action(async (name: string, file: string, options: { datastore?: string; json?: boolean }) => {
      const imported = await context.api.post<DiskView>('/v1/disks/import', {
        name,
        file: resolve(context.cwd, file),
        ...(options.datastore === undefined ? {} : { datastore: options.datastore }),
      });
      if (options.json) return printJson(context, imported);
      context.print(`Imported disk ${imported.name}: ${describe(imported)}.`);
      printConnectHint(context, imported);
    });
}

function addList(disk: Command, context: CliContext): void {
  disk
    .command('list')
    .alias('ls')
    .description('list every disk the agent serves')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean }) => {
      const { disks } = await context.api.get<{ disks: DiskView[] }>('/v1/disks');
      if (options.json) return printJson(context, disks);
      if (disks.length === 0)
        return context.print('No disks. Create one with: ferry disk create NAME --size 10G');
      context.print(
        formatTable<DiskView>(
          [
            { header: 'NAME', value: (d) => d.name },
            {
              header: 'DATASTORE',
              value: (d) => (d.host === null ? d.datastore : `${d.host}:${d.datastore}`),
            },
            { header: 'SIZE', value: (d) => formatSize(d.sizeBytes), align: 'right' },
            { header: 'ALLOCATED', value: (d) => sizeOrDash(d.allocatedBytes), align: 'right' },
            { header: 'PROVISIONING', value: (d) => d.provisioning },
            { header: 'GEN', value: (d) => String(d.generation), align: 'right' },
            { header: 'URI', value: (d) => d.uri },
          ],
          disks,
        ),
      );
    });
}

function addShow(disk: Command, context: CliContext): void {
  disk
    .command('show')
    .description('show one disk')
    .argument('<name>', 'disk name')
    .option('--json', 'print the disk as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const shown = await context.api.get<DiskView>(`/v1/disks/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, shown);
      context.print(formatFields(diskFields(shown)));
    });
}

function addStats(disk: Command, context: CliContext): void {
  disk
    .command('stats')
    .description('show the guest I/O counters of one disk since the agent opened it')
    .argument('<name>', 'disk name')
    .option('--json', 'print the counters as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const reply = await context.api.get<{ stats: StatsSnapshot }>(
        `/v1/disks/${encodeURIComponent(name)}/stats`,
      );
      if (options.json) return printJson(context, reply);
      const rows = Object.entries(reply.stats.verbs).map(([verb, counters]) => ({
        verb,
        ...counters,
      }));
      context.print(
        formatTable(
          [
            { header: 'VERB', value: (r) => r.verb },
            { header: 'OPS', value: (r) => String(r.operations), align: 'right' },
            { header: 'BYTES', value: (r) => formatSize(r.bytes), align: 'right' },
            { header: 'ERRORS', value: (r) => String(r.errors), align: 'right' },
            { header: 'P50', value: (r) => formatMicros(r.latency.p50Us), align: 'right' },
            { header: 'P99', value: (r) => formatMicros(r.latency.p99Us), align: 'right' },
          ],
          rows,
        ),
      );
    });
}

function addRemove(disk: Command, context: CliContext): void {
  disk
    .command('rm')
    .alias('remove')
    .description('stop serving a disk, disconnect its NBD clients and delete its files')
    .argument('<name>', 'disk name')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      await context.api.delete(`/v1/disks/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, { removed: name });
      context.print(`Removed disk ${name}.`);
    });
}

interface CreateOptions {
  size: number;
  datastore?: string;
  thin?: boolean;
  thick?: boolean;
  json?: boolean;
}

function parseSizeOption(text: string): number {
  try {
    return parseSize(text);
  } catch (error) {
    throw new InvalidArgumentError(errorMessageOf(error));
  }
}

function describe(disk: DiskView): string {
  if (disk.host !== null) {
    return `${formatSize(disk.sizeBytes)} raw disk on host ${disk.host} (datastore ${disk.datastore}), passed through here`;
  }
  return `${formatSize(disk.sizeBytes)} ${disk.provisioning} raw disk in datastore ${disk.datastore}`;
}

function printConnectHint(context: CliContext, disk: DiskView): void {
  context.print(`NBD URI: ${disk.uri}`);
  if (disk.socketUri !== null) context.print(`         ${disk.socketUri}`);
  context.print(`  e.g.   qemu-img info ${disk.uri}`);
}

function diskFields(disk: DiskView): [string, string][] {
  if (disk.host !== null) {
    return [
      ['name', disk.name],
      ['lives on', `host ${disk.host}, datastore ${disk.datastore}`],
      ['here', 'passed through: this host forwards the export to its host'],
      ['size', `${formatSize(disk.sizeBytes)} (${disk.sizeBytes} bytes)`],
      ['generation', String(disk.generation)],
      ['uri', disk.uri],
    ];
  }
  return [
    ['name', disk.name],
    ['datastore', disk.datastore],
    ['size', `${formatSize(disk.sizeBytes)} (${disk.sizeBytes} bytes)`],
    [
      'allocated',
      disk.allocatedBytes === null
        ? 'unknown (the image cannot be stat-ed)'
        : `${formatSize(disk.allocatedBytes)} (${disk.allocatedBytes} bytes)`,
    ],
    ['provisioning', disk.provisioning],
    ['format', 'raw'],
    ['generation', String(disk.generation)],
    ['image', disk.image],
    ['created', disk.createdAt],
    ['uri', disk.uri],
    ...(disk.socketUri === null ? [] : [['socket uri', disk.socketUri] as [string, string]]),
  ];
}

function formatMicros(us: number): string {
  if (us === 0) return '-';
  return us < 1000 ? `${Math.round(us)}us` : `${(us / 1000).toFixed(1)}ms`;
}

function sizeOrDash(bytes: number | null): string {
  return bytes === null ? '-' : formatSize(bytes);
}
