import type { Command } from 'commander';
import type { VmInfo } from '../host/agent.js';
import { NAME_HELP } from '../host/names.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatFields, formatTable } from './table.js';

/** `ferry vm ...`: create (register), list, show, remove VMs: a home directory and its disks. */
export function addVmCommands(program: Command, context: CliContext): void {
  const vm = program
    .command('vm')
    .description(
      'register, list, show and remove VMs: a home directory (config, logs) and its disks',
    );
  addCreate(vm, context);
  addList(vm, context);
  addShow(vm, context);
  addRemove(vm, context);
}

function addCreate(vm: Command, context: CliContext): void {
  vm.command('create')
    .description('register a VM: make its home directory, naming disks that exist')
    .argument('<name>', `VM name: ${NAME_HELP}`)
    .requiredOption('--disk <disk>', 'a disk of the VM (repeat for each)', collect, [])
    .option('--datastore <name>', "where its home directory goes (default: the first disk's)")
    .option('--json', 'print the VM as JSON')
    .addHelpText(
      'after',
      '\nExample:\n  $ ferry vm create web --disk web-os --disk web-data\n  $ ferry migrate web --vm --to fast',
    )
    .action(
      async (name: string, options: { disk: string[]; datastore?: string; json?: boolean }) => {
        const created = await context.api.post<VmInfo>('/v1/vms', {
          name,
          disks: options.disk,
          ...(options.datastore === undefined ? {} : { datastore: options.datastore }),
        });
        if (options.json) return printJson(context, created);
        context.print(
          `Created VM ${created.name} in datastore ${created.datastore} with disks ` +
            `${created.disks.join(', ')}; its home is ${created.home}.`,
        );
      },
    );
}

function addList(vm: Command, context: CliContext): void {
  vm.command('list')
    .alias('ls')
    .description('list every VM the agent knows')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean }) => {
      const { vms } = await context.api.get<{ vms: VmInfo[] }>('/v1/vms');
      if (options.json) return printJson(context, vms);
      if (vms.length === 0)
        return context.print('No VMs. Register one with: ferry vm create NAME --disk DISK');
      context.print(
        formatTable<VmInfo>(
          [
            { header: 'NAME', value: (v) => v.name },
            { header: 'DATASTORE', value: (v) => v.datastore },
            { header: 'SIZE', value: (v) => formatSize(v.sizeBytes), align: 'right' },
            { header: 'DISKS', value: (v) => v.disks.join(',') },
          ],
          vms,
        ),
      );
    });
}

function addShow(vm: Command, context: CliContext): void {
  vm.command('show')
    .description('show one VM')
    .argument('<name>', 'VM name')
    .option('--json', 'print the VM as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const shown = await context.api.get<VmInfo>(`/v1/vms/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, shown);
      context.print(
        formatFields([
          ['name', shown.name],
          ['datastore', shown.datastore],
          ['home', shown.home],
          ['disks', shown.disks.join(', ')],
          ['size', `${formatSize(shown.sizeBytes)} (${shown.sizeBytes} bytes)`],
          ['created', shown.createdAt],
        ]),
      );
    });
}

function addRemove(vm: Command, context: CliContext): void {
  vm.command('rm')
    .alias('remove')
    .description('unregister a VM: delete its home directory; its disks stay and are served')
    .argument('<name>', 'VM name')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      await context.api.delete(`/v1/vms/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, { removed: name });
      context.print(`Removed VM ${name} (its disks are still served).`);
    });
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
