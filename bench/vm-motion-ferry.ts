import { readFile, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Host } from '../test/cross-host/netns.js';
import { type ServedPair, startServedPair } from '../test/cross-host/two-serves.js';
import { runCommand } from './children.js';
import { pause } from './migrate-step.js';
import {
  ackCount,
  ConsoleRecorder,
  consoleFigures,
  monotonicMs,
  reconstructGuestLog,
  verifyImage,
} from './vm-motion-console.js';
import { guestAppend, type MotionContext, type MotionSample } from './vm-motion-guest.js';
import { ConsoleStamper } from './vm-motion-stamper.js';

/**
 * Ferry's side of the VM motion benchmark (issue 8), on the same host pair, link and guest as
 * the QEMU-only reference (vm-motion-qemu.ts):
 *
 *   `ferry serve` on each host (test/cross-host/two-serves.ts); on A the template image imported
 *   as a disk, a VM made of it (`ferry vm create ... --accel tcg --kernel --initrd --append`) and
 *   started; after the guest's I/O was measured alone, `ferry migrate VM --vm --to-host b
 *   --json`, timed from the command to its exit (the guest runs at B by then).
 *
 * The contract this is written against (the command is issue 8's, built alongside): the JSON is
 * the finished job, `state` `succeeded`, with `durationMs`, `downtimeMs` and
 * `memory: { qemuDowntimeMs, storageSwitchoverMs, pauseMs }` (src/host/vm-motion.ts,
 * VmDowntime). A field that is missing reads as NaN in the table.
 *
 * The console: a Ferry VM's QEMU appends its serial console to `console.log` in the VM's home,
 * so both hosts' files are followed by polling (vm-motion-console.ts, `tailFile`): A's from the
 * start (the descriptor stays open after the move deletes the home there), B's from whenever
 * it appears, under the move's name of the home (`.VM.home-move/`) or its final one. The home's
 * files, console included, are copied to B at the start of the move, so B's file begins with
 * A's lines; the recorder keeps each line's first sighting.
 */

const VM = 'motion';
const DISK = 'motion-disk';
const BOOT_ACKS = 5;
const DRAIN_MS = 300;
const CLI_TIMEOUT_MS = 120_000;

interface VmShown {
  readonly console: string;
  readonly home: string;
}

interface DatastoreShown {
  readonly name: string;
  readonly path: string;
}

interface DiskShown {
  readonly image: string;
  readonly datastore: string;
}

/** The finished job of `ferry migrate --vm --to-host --json`, as far as the bench reads it. */
interface VmMoveJob {
  readonly state: string;
  readonly durationMs?: number;
  readonly downtimeMs?: number | null;
  readonly error?: { readonly code: string; readonly message: string } | null;
  readonly memory?: {
    readonly qemuDowntimeMs?: number;
    readonly storageSwitchoverMs?: number;
    readonly pauseMs?: number;
  } | null;
}

export async function ferryMove(context: MotionContext, pollMs: number): Promise<MotionSample> {
  const { pair, guest } = context;
  const served = await startServedPair(pair);
  const recorder = new ConsoleRecorder();
  const stamper = ConsoleStamper.start(recorder);
  try {
    const { a, b } = served;
    const image = join(a.dataDir, `${DISK}.raw`);
    await runCommand('cp', 'cp', ['--sparse=always', context.templatePath, image], {
      timeoutMs: 120_000,
    });
    await a.ferryOk(['disk', 'import', DISK, image], CLI_TIMEOUT_MS);
    const created = JSON.parse(
      await a.ferryOk([
        'vm',
        'create',
        VM,
        '--disk',
        DISK,
        '--memory',
        `${guest.memoryBytes / 2 ** 20}M`,
        '--cpus',
        '1',
        '--accel',
        'tcg',
        '--kernel',
        guest.image.kernel,
        '--initrd',
        guest.image.initrd,
        '--append',
        guestAppend(guest),
        '--json',
      ]),
    ) as VmShown;
    await stamper.tail('source', [created.console], pollMs);
    await a.ferryOk(['vm', 'start', VM, '--json']);
    await recorder.waitFor(
      'the Ferry VM booting at A',
      (lines) => ackCount(lines) >= BOOT_ACKS,
      context.timeoutMs,
    );
    const datastore = await defaultDatastore(served);
    await stamper.tail(
      'destination',
      [
        join(datastore.path, VM, 'console.log'),
        join(datastore.path, `.${VM}.home-move`, 'console.log'),
      ],
      pollMs,
    );

    const beforeMs = monotonicMs();
    await pause(context.beforeSeconds * 1000, context.stop);
    const startMs = monotonicMs();
    const out = await a.ferryOk(
      ['migrate', VM, '--vm', '--to-host', 'b', '--json'],
      context.timeoutMs,
    );
    const runningMs = monotonicMs();
    const job = JSON.parse(out) as VmMoveJob;
    if (job.state !== 'succeeded') {
      throw new Error(`ferry migrate --vm ended ${job.state}: ${JSON.stringify(job.error)}`);
    }
    await pause(context.afterSeconds * 1000, context.stop);
    const endMs = monotonicMs();
    await b.ferryOk(['vm', 'stop', VM, '--force']);
    await sleep(DRAIN_MS);
    const resolutions = await stamper.close();
    const figures = consoleFigures(recorder.lines, { beforeMs, startMs, runningMs, endMs });
    const rebuilt = reconstructGuestLog(recorder.lines);
    const disk = JSON.parse(await b.ferryOk(['disk', 'show', DISK, '--json'])) as DiskShown;
    const imagePath = isAbsolute(disk.image) ? disk.image : join(datastore.path, disk.image);
    const mismatches = await verifyImage(imagePath, rebuilt.log);
    const memory = job.memory ?? {};
    return {
      flow: 'ferry',
      link: context.link.label,
      totalMs: runningMs - startMs,
      fromMirrorMs: Number.NaN,
      pauseMs: figures.switchoverGapMs,
      maxGapMs: figures.maxGapMs,
      maxGapEndMs: figures.maxGapEndMs,
      pauseEndMs: figures.firstDestinationMs - startMs,
      firstLineAfterRunningMs: figures.firstDestinationMs - runningMs,
      baselineMaxGapMs: figures.baselineMaxGapMs,
      qemuDowntimeMs: memory.qemuDowntimeMs ?? Number.NaN,
      storageSwitchoverMs: memory.storageSwitchoverMs ?? Number.NaN,
      reportedPauseMs: memory.pauseMs ?? Number.NaN,
      writesPerSecondBefore: figures.writesPerSecondBefore,
      writesPerSecondDuring: figures.writesPerSecondDuring,
      writesPerSecondAfter: figures.writesPerSecondAfter,
      verifiedWrites: rebuilt.log.lastAcked,
      mismatches,
      lostAcks: rebuilt.lostAcks,
      guestProblems: rebuilt.guestProblems,
      stampResolution: resolutions.join('; '),
    };
  } finally {
    await stamper.kill();
    await served.a.serve.kill('SIGKILL');
    await served.b.serve.kill('SIGKILL');
    // The VMs' QEMUs are daemons of the agents: they outlive them, so they go by pid.
    await killQemusIn(pair.a);
    await killQemusIn(pair.b);
    await rm(dirname(served.a.dataDir), { recursive: true, force: true });
  }
}

/** B's datastore a VM moved there without `--to` lands in: `default`, else the first. */
async function defaultDatastore(served: ServedPair): Promise<DatastoreShown> {
  const list = JSON.parse(
    await served.b.ferryOk(['datastore', 'list', '--json']),
  ) as DatastoreShown[];
  const found = list.find((d) => d.name === 'default') ?? list[0];
  if (found === undefined) throw new Error('host b has no datastore');
  return found;
}

/** SIGKILLs every QEMU running in `host`'s namespace (found by `ip netns pids`), by pid. */
async function killQemusIn(host: Host): Promise<void> {
  // A namespace that is gone has no QEMU left in it.
  const listed = await runCommand('ip', 'ip', ['netns', 'pids', host.ns], {
    timeoutMs: 10_000,
  }).catch(() => '');
  for (const pid of listed.split('\n').map(Number)) {
    if (!Number.isSafeInteger(pid) || pid <= 1) continue;
    const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
    if (!comm.startsWith('qemu-system')) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}
