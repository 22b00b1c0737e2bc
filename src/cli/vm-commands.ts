import { resolve } from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import type { VmInfo } from '../host/agent.js';
import { NAME_HELP } from '../host/names.js';
import type { Network } from '../host/networks.js';
import { formatSize, parseSize, SIZE_HELP } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatFields, formatTable } from './table.js';

/**
 * `ferry vm ...`: create, list, show, start, stop, read the console of, and remove VMs (a home
 * directory with the VM's config, its disks, and a QEMU process while it runs); and
 * `ferry network ...`: name this host's bridges for the VMs' NICs.
 */
export function addVmCommands(program: Command, context: CliContext): void {
  const vm = program
    .command('vm')
    .description(
      'create, start, stop, list and remove VMs: QEMU guests whose disks are Ferry disks',
    );
  addCreate(vm, context);
  addList(vm, context);
  addShow(vm, context);
  addStart(vm, context);
  addStop(vm, context);
  addLog(vm, context);
  addRemove(vm, context);
  addNetworkCommands(program, context);
}

interface CreateOptions {
  disk: string[];
  datastore?: string;
  memory?: string;
  cpus?: string;
  accel?: string;
  kernel?: string;
  initrd?: string;
  append?: string;
  nic: string[];
  json?: boolean;
}

function addCreate(vm: Command, context: CliContext): void {
  vm.command('create')
    .description('create a VM: its home directory and config, naming (or making) its disks')
    .argument('<name>', `VM name: ${NAME_HELP}`)
    .requiredOption(
      '--disk <disk[:size]>',
      'a disk of the VM, in bus order (/dev/vda first); with :SIZE it is created if missing (repeat for each)',
      collect,
      [],
    )
    .option('--memory <size>', `guest RAM, ${SIZE_HELP}`, '512M')
    .option('--cpus <n>', 'virtual CPUs', '1')
    .option('--accel <accel>', 'kvm, tcg, or auto (KVM where it works)', 'auto')
    .option(
      '--kernel <file>',
      'boot this kernel directly (copied into the home, so it moves with the VM)',
    )
    .option('--initrd <file>', 'the initrd that goes with --kernel (copied too)')
    .option(
      '--append <args>',
      'the kernel command line (console=ttyS0 makes "ferry vm log" useful)',
    )
    .option(
      '--nic <spec>',
      'a NIC: network=NAME[,mac=MAC] (repeat for each; the MAC is stable when not given)',
      collect,
      [],
    )
    .option('--datastore <name>', "where its home directory goes (default: the first disk's)")
    .option('--json', 'print the VM as JSON')
    .addHelpText(
      'after',
      '\nExamples:\n' +
        '  $ ferry network add br0 --bridge br0\n' +
        '  $ ferry vm create web1 --disk web1-os:10G --memory 1G --kernel /boot/vmlinuz \\\n' +
        '      --initrd /boot/initrd.img --append "console=ttyS0 root=/dev/vda" --nic network=br0\n' +
        '  $ ferry vm start web1 && ferry vm log web1\n' +
        '  $ ferry migrate web1 --vm --to-host B --network-map br0=br1',
    )
    .action(async (name: string, options: CreateOptions) => {
      const created = await context.api.post<VmInfo>('/v1/vms', {
        name,
        disks: options.disk,
        memory: options.memory ?? '512M',
        cpus: parseCount(options.cpus ?? '1', '--cpus'),
        accel: options.accel ?? 'auto',
        nics: options.nic.map(parseNic),
        ...(options.datastore === undefined ? {} : { datastore: options.datastore }),
        ...(options.kernel === undefined ? {} : { kernel: resolve(context.cwd, options.kernel) }),
        ...(options.initrd === undefined ? {} : { initrd: resolve(context.cwd, options.initrd) }),
        ...(options.append === undefined ? {} : { append: options.append }),
      });
      if (options.json) return printJson(context, created);
      context.print(
        `Created VM ${created.name} in datastore ${created.datastore} with disks ` +
          `${created.disks.join(', ')}; its home is ${created.home}. Start it with: ferry vm start ${created.name}`,
      );
    });
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
        return context.print('No VMs. Create one with: ferry vm create NAME --disk DISK:SIZE');
      context.print(
        formatTable<VmInfo>(
          [
            { header: 'NAME', value: (v) => v.name },
            { header: 'STATE', value: (v) => v.state },
            { header: 'DATASTORE', value: (v) => v.datastore },
            { header: 'MEMORY', value: (v) => formatSize(v.memoryBytes), align: 'right' },
            { header: 'CPUS', value: (v) => String(v.cpus), align: 'right' },
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
          ['state', shown.pid === null ? shown.state : `${shown.state} (pid ${shown.pid})`],
          ['datastore', shown.datastore],
          ['home', shown.home],
          ['disks', shown.disks.join(', ')],
          ['size', `${formatSize(shown.sizeBytes)} (${shown.sizeBytes} bytes)`],
          ['memory', formatSize(shown.memoryBytes)],
          ['cpus', String(shown.cpus)],
          ['accel', shown.accel],
          ['kernel', shown.kernel ?? '-'],
          ['append', shown.append ?? '-'],
          ['nics', shown.nics.map((nic) => `${nic.network} ${nic.mac}`).join(', ') || '-'],
          ['console', shown.console],
          ['created', shown.createdAt],
        ]),
      );
    });
}

function addStart(vm: Command, context: CliContext): void {
  vm.command('start')
    .description("start a VM: QEMU with its disks on this host's exports")
    .argument('<name>', 'VM name')
    .option('--json', 'print the VM as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const started = await context.api.post<VmInfo>(
        `/v1/vms/${encodeURIComponent(name)}/start`,
        {},
      );
      if (options.json) return printJson(context, started);
      context.print(
        `VM ${name} is ${started.state} (pid ${started.pid}); its console: ferry vm log ${name}`,
      );
    });
}

function addStop(vm: Command, context: CliContext): void {
  vm.command('stop')
    .description('stop a VM: ACPI power-down, then quit QEMU after the timeout')
    .argument('<name>', 'VM name')
    .option('--force', 'quit QEMU at once (its disks are flushed; the guest gets no warning)')
    .option('--timeout <seconds>', 'how long the guest gets to power off', '30')
    .option('--json', 'print the VM as JSON')
    .action(
      async (name: string, options: { force?: boolean; timeout?: string; json?: boolean }) => {
        const stopped = await context.api.post<VmInfo>(`/v1/vms/${encodeURIComponent(name)}/stop`, {
          force: options.force === true,
          timeoutSeconds: parseCount(options.timeout ?? '30', '--timeout'),
        });
        if (options.json) return printJson(context, stopped);
        context.print(`VM ${name} is ${stopped.state}.`);
      },
    );
}

function addLog(vm: Command, context: CliContext): void {
  vm.command('log')
    .description("print the end of a VM's serial console (kept in its home directory)")
    .argument('<name>', 'VM name')
    .option('--bytes <size>', `how much of the end to print, ${SIZE_HELP}`, '64K')
    .action(async (name: string, options: { bytes?: string }) => {
      const bytes = parseSize(options.bytes ?? '64K');
      const { log } = await context.api.get<{ log: string }>(
        `/v1/vms/${encodeURIComponent(name)}/log?bytes=${bytes}`,
      );
      context.print(log.replace(/\n$/, ''));
    });
}

function addRemove(vm: Command, context: CliContext): void {
  vm.command('rm')
    .alias('remove')
    .description('remove a stopped VM: delete its home directory; its disks stay and are served')
    .argument('<name>', 'VM name')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      await context.api.delete(`/v1/vms/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, { removed: name });
      context.print(`Removed VM ${name} (its disks are still served).`);
    });
}

function addNetworkCommands(program: Command, context: CliContext): void {
  const network = program
    .command('network')
    .description("name this host's bridges for VM NICs (a NIC is a tap on its network's bridge)");
  network
    .command('add')
    .description('name an existing Linux bridge as a network')
    .argument('<name>', `network name: ${NAME_HELP}`)
    .requiredOption('--bridge <bridge>', 'the bridge device (it must exist)')
    .option('--json', 'print the network as JSON')
    .addHelpText('after', '\nExample:\n  $ ferry network add br0 --bridge br0')
    .action(async (name: string, options: { bridge: string; json?: boolean }) => {
      const added = await context.api.post<Network>('/v1/networks', {
        name,
        bridge: options.bridge,
      });
      if (options.json) return printJson(context, added);
      context.print(`Added network ${added.name} on bridge ${added.bridge}.`);
    });
  network
    .command('list')
    .alias('ls')
    .description('list the networks')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean }) => {
      const { networks } = await context.api.get<{ networks: Network[] }>('/v1/networks');
      if (options.json) return printJson(context, networks);
      if (networks.length === 0)
        return context.print('No networks. Add one with: ferry network add NAME --bridge BRIDGE');
      context.print(
        formatTable<Network>(
          [
            { header: 'NAME', value: (n) => n.name },
            { header: 'BRIDGE', value: (n) => n.bridge },
          ],
          networks,
        ),
      );
    });
  network
    .command('rm')
    .alias('remove')
    .description('remove a network no VM uses (the bridge stays)')
    .argument('<name>', 'network name')
    .action(async (name: string) => {
      await context.api.delete(`/v1/networks/${encodeURIComponent(name)}`);
      context.print(`Removed network ${name}.`);
    });
}

/** `network=NAME[,mac=MAC]`. */
function parseNic(spec: string): { network: string; mac?: string } {
  const fields = new Map<string, string>();
  for (const part of spec.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw new InvalidArgumentError(`--nic ${spec}: write network=NAME[,mac=MAC]`);
    fields.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const network = fields.get('network');
  const unknown = [...fields.keys()].filter((key) => key !== 'network' && key !== 'mac');
  if (network === undefined || unknown.length > 0) {
    throw new InvalidArgumentError(`--nic ${spec}: write network=NAME[,mac=MAC]`);
  }
  const mac = fields.get('mac');
  return mac === undefined ? { network } : { network, mac };
}

function parseCount(text: string, option: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${option} ${text}: give a whole number of at least 1`);
  }
  return value;
}

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}
