import { Command } from 'commander';
import { DEFAULT_API_URL } from './api-client.js';
import { addClusterCommands } from './cluster-commands.js';
import type { CliContext } from './context.js';
import { addDatastoreCommands } from './datastore-commands.js';
import { addDemoCommand, type DemoFunction } from './demo-command.js';
import { addDiskCommands } from './disk-commands.js';
import { addDrsCommands } from './drs-commands.js';
import { addHostCommands } from './host-commands.js';
import { addJobCommands } from './job-commands.js';
import { addMigrateCommand } from './migrate-command.js';
import { addServeCommand, type ServeFunction } from './serve-command.js';
import { addTokenCommands } from './token-commands.js';
import { addVmCommands } from './vm-commands.js';

const EXAMPLES = `
Examples:
  See it work: migrate a disk live with each method while a guest writes, and verify every write:
    $ ferry demo

  Serve (state in ./ferry-data, NBD on 127.0.0.1:10809, API on 127.0.0.1:7480):
    $ ferry serve

  In another shell, create a 10 GiB thin disk and use it over NBD:
    $ ferry disk create vm1 --size 10G
    $ qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://127.0.0.1:10809/vm1
    $ qemu-system-x86_64 ... -drive file=nbd://127.0.0.1:10809/vm1,format=raw,if=virtio

  Bring your own image and storage:
    $ ferry datastore add fast /mnt/nvme/ferry
    $ ferry disk import web1 /mnt/nvme/web1.raw --datastore fast
    $ ferry disk list

  Move a disk to another datastore while its guest runs, and watch the jobs:
    $ ferry migrate web1 --to fast --speed 200M
    $ ferry job list

  Let two hosts know each other (the same psktool key file on both; see ferry host --help):
    $ ferry host add hostb http://hostb:7480 --key-file /etc/ferry/keys.psk

Environment:
  FERRY_API    the API that commands talk to (default ${DEFAULT_API_URL})
  FERRY_TOKEN  an API token (ferry token create), needed when FERRY_API is not on loopback

Exit codes: 0 ok, 1 the operation failed, 2 bad usage, 130 stopped following a job (Ctrl-C).`;

/**
 * The `ferry` command tree. Subcommands are created with `.command()` so they inherit the
 * parent's exit override and output settings (commander copies them at creation).
 */
export function buildProgram(
  version: string,
  context: CliContext,
  serve: ServeFunction,
  demo: DemoFunction,
  setExitCode: (code: number) => void,
): Command {
  const program = new Command('ferry')
    .description(
      'Ferry: serve virtual disks over NBD and move them between datastores while they run',
    )
    .version(version)
    .showHelpAfterError('(add --help for usage)')
    .addHelpText('after', EXAMPLES)
    .exitOverride();
  addServeCommand(program, context, serve, setExitCode);
  addDemoCommand(program, context, demo, setExitCode);
  addDatastoreCommands(program, context);
  addDiskCommands(program, context);
  addClusterCommands(program, context);
  addDrsCommands(program, context);
  addVmCommands(program, context);
  addHostCommands(program, context);
  addMigrateCommand(program, context, setExitCode);
  addJobCommands(program, context, setExitCode);
  addTokenCommands(program, context);
  return program;
}
