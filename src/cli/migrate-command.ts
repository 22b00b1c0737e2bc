import { type Command, InvalidArgumentError, Option } from 'commander';
import type { JobRecord } from '../control/job-record.js';
import { formatSpeed, parseSpeed, SPEED_HELP } from '../control/speed.js';
import { METHOD_DEFAULT, METHOD_NAMES, MIRROR_MODES, type MirrorMode } from '../migrate/method.js';
import { errorMessageOf } from '../util/errors.js';
import { parseSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { followJob, reportOutcome } from './job-follow.js';
import { describeSubject } from './job-format.js';

const HELP = `
Examples:
  Move disk vm1 to datastore fast while its guest keeps running, with a progress bar:
    $ ferry migrate vm1 --to fast

  Move disk vm1 to host b (added with "ferry host add b URL --key-file FILE"), into its
  datastore fast; afterwards this host's export of vm1 passes through to b:
    $ ferry migrate vm1 --to-host b --to fast

  Move VM web — its home directory and every disk, switched over together:
    $ ferry migrate web --vm --to fast

  Move running VM web1 to host b: home, disks, then memory, with one switchover; its NICs
  join network br1 there:
    $ ferry migrate web1 --vm --to-host b --network-map br0=br1 --max-downtime 300ms

  Copy at most 200 MiB/s, make the new image thick, and return at once:
    $ ferry migrate vm1 --to fast --speed 200M --thick --detach
    $ ferry job watch JOB        (follow it later)
    $ ferry job speed JOB 1G     (change the speed while it runs)

Methods:
  mirror    one pass; guest writes to copied blocks go to both sides (the default)
  dbt       changed-block tracking: copy, then copy what changed, pass after pass
  snapshot  guest writes go to a redo log while the base is copied, then the log
  sxm       snapshot, then mirror every write while the snapshot is copied

The guest sees at most one short pause (the downtime), at the switchover. Ctrl-C stops
following, not the job. A job that fails or is cancelled leaves the disk where it was.

Exit codes: 0 moved, 1 failed or cancelled (the guest runs on the source), 2 bad usage,
130 stopped following with Ctrl-C (the job runs on).`;

interface MigrateOptions {
  to?: string;
  toHost?: string;
  mirror?: MirrorMode;
  mirrorBuffer?: number;
  method?: (typeof METHOD_NAMES)[number];
  speed?: number;
  guestFirst?: boolean;
  thin?: boolean;
  thick?: boolean;
  detach?: boolean;
  json?: boolean;
  vm?: boolean;
  networkMap?: Record<string, string>;
  datastoreMap?: Record<string, string>;
  maxDowntime?: number;
}

/**
 * `ferry migrate NAME --to DATASTORE [--vm]`: starts a move (POST /v1/migrations) and follows it.
 * NAME is a disk, or with `--vm` a VM: said explicitly, because a VM and a disk may share a name.
 */
export function addMigrateCommand(
  program: Command,
  context: CliContext,
  setExitCode: (code: number) => void,
): void {
  program
    .command('migrate')
    .description(
      'move a disk, or a VM with --vm (home, disks and, while it runs, memory), to another datastore or host while its guest runs',
    )
    .argument('<name>', 'the disk to move (the VM with --vm)')
    .option('--vm', 'NAME is a VM: move its home directory and all its disks together')
    .option('--to <datastore>', 'the datastore to move it to (with --to-host: a datastore there)')
    .option('--to-host <host>', 'move the disk (or VM) to another host (default datastore there)')
    .option(
      '--network-map <src=dst,...>',
      'a VM to another host: the network there for each of its networks here (default: same name)',
      parseNameMap,
    )
    .option(
      '--datastore-map <src=dst,...>',
      'a VM to another host: the datastore there for each datastore of its disks here',
      parseNameMap,
    )
    .option(
      '--max-downtime <ms>',
      "a running VM to another host: QEMU's downtime limit for the memory's last round, e.g. 300ms or 1s (default 300ms)",
      parseDurationMs,
    )
    .addOption(
      new Option(
        '--mirror <mode>',
        'mirrored writes: sync (acknowledged after both sides), async (after the source, queued), auto (async that turns sync when the destination falls behind); default sync on one host, auto across hosts',
      ).choices(MIRROR_MODES),
    )
    .option('--mirror-buffer <size>', 'the async mirror buffer (default 64M)', parseSizeOption)
    .addOption(
      new Option(
        '--method <method>',
        `how to keep the copy in step (default ${METHOD_DEFAULT})`,
      ).choices(METHOD_NAMES),
    )
    .option('--speed <speed>', `copy rate limit: ${SPEED_HELP}`, parseSpeedOption)
    .option(
      '--no-guest-first',
      "keep every copy chunk in flight even while the guest's I/O slows (by default the copy backs off then)",
    )
    .option('--thin', 'make the new image thin (allocated as written)')
    .addOption(
      new Option('--thick', 'allocate the new image fully before copying').conflicts('thin'),
    )
    .option('--detach', 'start the job and return; do not follow it')
    .option('--json', 'print the job (the final one unless --detach) as JSON on stdout')
    .addHelpText('after', HELP)
    .action(async function (this: Command, name: string, options: MigrateOptions) {
      if (options.to === undefined && options.toHost === undefined) {
        this.error(
          'error: say where to: --to DATASTORE (on this host) or --to-host HOST [--to DATASTORE]',
          { exitCode: 2, code: 'commander.usage' },
        );
      }
      const job = await context.api.post<JobRecord>('/v1/migrations', {
        ...(options.vm ? { vm: name } : { disk: name }),
        ...(options.to === undefined ? {} : { datastore: options.to }),
        ...(options.toHost === undefined ? {} : { host: options.toHost }),
        ...(options.mirror === undefined ? {} : { mirror: options.mirror }),
        ...(options.mirrorBuffer === undefined ? {} : { mirrorBuffer: options.mirrorBuffer }),
        ...(options.method === undefined ? {} : { method: options.method }),
        ...(options.speed === undefined ? {} : { speed: options.speed }),
        ...(options.guestFirst === false ? { guestFirst: false } : {}),
        ...provisioningOf(options),
        ...(options.networkMap === undefined ? {} : { networkMap: options.networkMap }),
        ...(options.datastoreMap === undefined ? {} : { datastoreMap: options.datastoreMap }),
        ...(options.maxDowntime === undefined ? {} : { maxDowntimeMs: options.maxDowntime }),
      });
      if (options.detach) {
        if (options.json) return printJson(context, job);
        context.print(
          `Started job ${job.id}: moving ${describeSubject(job)} from ${job.from} to ${job.to} with ` +
            `${job.requestedMethod} (speed ${formatSpeed(job.speedBytesPerSecond)}).`,
        );
        context.print(`  follow it:  ferry job watch ${job.id}`);
        context.print(`  cancel it:  ferry job cancel ${job.id}`);
        return;
      }
      setExitCode(reportOutcome(context, await followJob(context, job), options.json === true));
    });
}

function provisioningOf(options: MigrateOptions): { provisioning?: 'thin' | 'thick' } {
  if (options.thick) return { provisioning: 'thick' };
  if (options.thin) return { provisioning: 'thin' };
  return {};
}

/** `a=b,c=d`. */
export function parseNameMap(text: string): Record<string, string> {
  const map: Record<string, string> = {};
  for (const pair of text.split(',')) {
    const [from, to, extra] = pair.split('=');
    if (!from || !to || extra !== undefined) {
      throw new InvalidArgumentError(
        `${JSON.stringify(pair)}: write SRC=DST, pairs separated by commas`,
      );
    }
    map[from] = to;
  }
  return map;
}

/** `300ms`, `1s`, `1.5s`, or a bare number of milliseconds. */
export function parseDurationMs(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text.trim());
  const value = match === null ? Number.NaN : Number(match[1]) * (match[2] === 's' ? 1000 : 1);
  if (!Number.isFinite(value) || value < 1 || value > 600_000) {
    throw new InvalidArgumentError(`${text}: write a time such as 300ms or 1s (1 ms to 10 min)`);
  }
  return Math.round(value);
}

function parseSizeOption(text: string): number {
  try {
    return parseSize(text);
  } catch (error) {
    throw new InvalidArgumentError(errorMessageOf(error));
  }
}

export function parseSpeedOption(text: string): number {
  try {
    return parseSpeed(text);
  } catch (error) {
    throw new InvalidArgumentError(errorMessageOf(error));
  }
}
