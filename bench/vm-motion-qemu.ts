import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  continueMigration,
  enableMigrationCapabilities,
  QmpClient,
  queryMigration,
  setMigrationParameters,
  startIncoming,
  startMigration,
  waitForMigrationStatus,
} from '../src/host/qemu/index.js';
import type { Host } from '../test/cross-host/netns.js';
import { runCommand } from './children.js';
import { pause } from './migrate-step.js';
import {
  ackCount,
  ConsoleRecorder,
  type ConsoleSide,
  consoleFigures,
  monotonicMs,
  reconstructGuestLog,
  verifyImage,
} from './vm-motion-console.js';
import { guestAppend, type MotionContext, type MotionSample } from './vm-motion-guest.js';
import { ConsoleStamper } from './vm-motion-stamper.js';

/**
 * The reference of the VM motion benchmark (issue 8): the QEMU-only move that libvirt drives for
 * `virsh migrate --live --copy-storage-all` (src/qemu/qemu_migration.c and
 * qemu_migration_params.c), step by step over QMP, between the pair's two hosts:
 *
 *   Prepare (B): QEMU started paused with `-incoming defer` on an empty image of the disk's size;
 *     capabilities `events` and `late-block-activate` (libvirt's always-on set for a
 *     destination); `migrate-incoming tcp:B:PORT`; `nbd-server-start` on B's address and
 *     `block-export-add` of the disk's node, writable.
 *   Perform (A): `blockdev-add` of an NBD node on B's export, `blockdev-mirror` (sync full,
 *     copy-mode background) onto it, wait for BLOCK_JOB_READY; capabilities `events` and
 *     `pause-before-switchover` (libvirt's always-on set for a source), `max-bandwidth`
 *     unlimited (libvirt's default), `migrate tcp:B:PORT`; at `pre-switchover` (guest stopped)
 *     `block-job-cancel` of the mirror, which on a READY job leaves the target a point-in-time
 *     copy (BLOCK_JOB_COMPLETED); `migrate-continue`; wait for `completed`.
 *   Finish (B): wait for `completed`, `nbd-server-stop`, `cont`: the guest runs at B.
 *
 * This is a lower bound of libvirt's own times: libvirt adds its RPCs between the two hosts'
 * daemons (Begin, Prepare, Perform, Finish, Confirm) and its own bookkeeping; here one process
 * drives both QEMUs over local sockets.
 *
 * The guest runs on a local raw image at A, with QEMU's default cache (writeback), like a
 * libvirt disk without a cache attribute. Its console is a socket chardev on each side, read by
 * this process and stamped on arrival (vm-motion-console.ts). Afterwards the guest is stopped
 * at B and B's image checked against every write the guest acknowledged.
 */

const NBD_PORT = 10809;
/** libvirt's first migration port. */
const MIGRATION_PORT = 49152;
/** libvirt's default `max-bandwidth`: as good as unlimited. */
const BANDWIDTH_UNLIMITED = 8_796_093_022_207 * 1024 * 1024;
const JOB_ID = 'mirror0';
const DISK_NODE = 'disk0';
const TARGET_NODE = 'mirror0-target';
const QMP_TIMEOUT_MS = 30_000;
/** The guest's boot is over once it has acknowledged this many writes. */
const BOOT_ACKS = 5;
/** After `stop` at the end, time for the console's last bytes to arrive before reading it. */
const DRAIN_MS = 300;
const DOWNTIME_ATTEMPTS = 50;
const DOWNTIME_RETRY_MS = 20;

export async function qemuOnlyMove(context: MotionContext): Promise<MotionSample> {
  const { pair, dir, guest } = context;
  const sourceImage = join(dir, 'qemu-source.raw');
  const targetImage = join(dir, 'qemu-target.raw');
  await runCommand('cp', 'cp', ['--sparse=always', context.templatePath, sourceImage], {
    timeoutMs: 120_000,
  });
  await writeFile(targetImage, '');
  await runCommand('truncate', 'truncate', ['-s', String(guest.diskBytes), targetImage], {
    timeoutMs: 10_000,
  });
  const recorder = new ConsoleRecorder();
  const stamper = ConsoleStamper.start(recorder);
  const qemus: ReferenceQemu[] = [];
  try {
    const source = await launchQemu(pair.a, 'source', context, sourceImage, [], stamper);
    qemus.push(source);
    await source.qmp.execute('cont');
    await recorder.waitFor(
      'the guest booting at A',
      (lines) => ackCount(lines) >= BOOT_ACKS,
      context.timeoutMs,
      source.failure,
    );
    const beforeMs = monotonicMs();
    await pause(context.beforeSeconds * 1000, context.stop);

    // Prepare, on B.
    const startMs = monotonicMs();
    const incoming = ['-incoming', 'defer'];
    const destination = await launchQemu(
      pair.b,
      'destination',
      context,
      targetImage,
      incoming,
      stamper,
    );
    qemus.push(destination);
    const b = pair.b.ip;
    await destination.qmp.execute('migrate-set-capabilities', {
      capabilities: [
        { capability: 'events', state: true },
        { capability: 'late-block-activate', state: true },
      ],
    });
    await startIncoming(destination.qmp, `tcp:${b}:${MIGRATION_PORT}`);
    await destination.qmp.execute('nbd-server-start', {
      addr: { type: 'inet', data: { host: b, port: String(NBD_PORT) } },
    });
    await destination.qmp.execute('block-export-add', {
      type: 'nbd',
      id: `${DISK_NODE}-export`,
      'node-name': DISK_NODE,
      name: DISK_NODE,
      writable: true,
    });

    // Perform, on A: the storage first.
    await source.qmp.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': TARGET_NODE,
      server: { type: 'inet', host: b, port: String(NBD_PORT) },
      export: DISK_NODE,
    });
    const isJob = (event: { data: Readonly<Record<string, unknown>> }): boolean =>
      event.data.device === JOB_ID;
    const ready = source.qmp.waitForEvent('BLOCK_JOB_READY', {
      predicate: isJob,
      timeoutMs: context.timeoutMs,
    });
    const mirrorMs = monotonicMs();
    await source.qmp.execute('blockdev-mirror', {
      'job-id': JOB_ID,
      device: DISK_NODE,
      target: TARGET_NODE,
      sync: 'full',
    });
    await ready;
    // Then the memory, paused before the switchover for the mirror's end.
    await enableMigrationCapabilities(source.qmp, { pauseBeforeSwitchover: true, events: true });
    await setMigrationParameters(source.qmp, { maxBandwidthBytes: BANDWIDTH_UNLIMITED });
    const waits = { timeoutMs: context.timeoutMs, pollIntervalMs: 100 };
    await startMigration(source.qmp, `tcp:${b}:${MIGRATION_PORT}`);
    await waitForMigrationStatus(source.qmp, ['pre-switchover'], waits);
    const mirrorEnded = source.qmp.waitForEvent('BLOCK_JOB_COMPLETED', {
      predicate: isJob,
      timeoutMs: context.timeoutMs,
    });
    await source.qmp.execute('block-job-cancel', { device: JOB_ID });
    const ended = await mirrorEnded;
    if (ended.data.error !== undefined) {
      throw new Error(`the mirror ended with ${String(ended.data.error)}`);
    }
    await continueMigration(source.qmp);
    await waitForMigrationStatus(source.qmp, ['completed'], waits);
    const downtimeMs = await settledDowntime(source.qmp);

    // Finish, on B.
    await waitForMigrationStatus(destination.qmp, ['completed'], waits);
    await destination.qmp.execute('nbd-server-stop');
    await destination.qmp.execute('cont');
    const runningMs = monotonicMs();

    await pause(context.afterSeconds * 1000, context.stop);
    const endMs = monotonicMs();
    await destination.qmp.execute('stop');
    await sleep(DRAIN_MS);
    const resolutions = await stamper.close();
    const figures = consoleFigures(recorder.lines, { beforeMs, startMs, runningMs, endMs });
    const rebuilt = reconstructGuestLog(recorder.lines);
    for (const qemu of qemus.splice(0)) await qemu.quit();
    const mismatches = await verifyImage(targetImage, rebuilt.log);
    return {
      flow: 'qemu',
      link: context.link.label,
      totalMs: runningMs - startMs,
      fromMirrorMs: runningMs - mirrorMs,
      pauseMs: figures.switchoverGapMs,
      maxGapMs: figures.maxGapMs,
      maxGapEndMs: figures.maxGapEndMs,
      pauseEndMs: figures.firstDestinationMs - startMs,
      firstLineAfterRunningMs: figures.firstDestinationMs - runningMs,
      baselineMaxGapMs: figures.baselineMaxGapMs,
      qemuDowntimeMs: downtimeMs,
      storageSwitchoverMs: Number.NaN,
      reportedPauseMs: Number.NaN,
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
    for (const qemu of qemus) await qemu.kill();
    await stamper.kill();
  }
}

/**
 * QEMU's `downtime` of a completed migration. QEMU 7.2 reports `completed` (status and event)
 * before it computes the downtime and total time (migration_calculate_complete runs after, in
 * migration_iteration_finish), so a query right at `completed` may read 0: ask again until the
 * figure is there.
 */
async function settledDowntime(qmp: QmpClient): Promise<number> {
  for (let attempt = 0; attempt < DOWNTIME_ATTEMPTS; attempt += 1) {
    const info = await queryMigration(qmp);
    if (info.downtime !== undefined && info.downtime > 0) return info.downtime;
    await sleep(DOWNTIME_RETRY_MS);
  }
  return Number.NaN;
}

interface ReferenceQemu {
  readonly qmp: QmpClient;
  /** Why this QEMU cannot go on (it exited), or undefined while it runs. */
  readonly failure: () => string | undefined;
  /** `quit` (QEMU flushes its disks), and waits for the exit. */
  quit(): Promise<void>;
  /** SIGKILL if it still runs; resolves once it has exited. */
  kill(): Promise<void>;
}

/**
 * Starts the guest's QEMU in `host`, paused (`-S`), on `image`, with QMP and the console on
 * Unix sockets in the move's directory, and connects to both before anything runs (a socket
 * chardev without a client drops the guest's output).
 */
async function launchQemu(
  host: Host,
  side: ConsoleSide,
  context: MotionContext,
  image: string,
  extra: readonly string[],
  stamper: ConsoleStamper,
): Promise<ReferenceQemu> {
  const { guest, dir } = context;
  const qmpPath = join(dir, `qemu-${side}.qmp`);
  const consolePath = join(dir, `qemu-${side}.console`);
  const args = [
    ...['-name', `guest=motion-${side}`, '-machine', 'q35', '-accel', 'tcg'],
    ...['-m', `${guest.memoryBytes / 2 ** 20}M`, '-smp', '1'],
    ...['-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot'],
    ...['-chardev', `socket,id=serial0,path=${consolePath},server=on,wait=off`],
    ...['-serial', 'chardev:serial0'],
    ...['-qmp', `unix:${qmpPath},server=on,wait=off`],
    ...['-kernel', guest.image.kernel, '-initrd', guest.image.initrd],
    ...['-append', guestAppend(guest)],
    ...[
      '-blockdev',
      JSON.stringify({ driver: 'file', filename: image, 'node-name': `${DISK_NODE}-file` }),
    ],
    ...[
      '-blockdev',
      JSON.stringify({ driver: 'raw', file: `${DISK_NODE}-file`, 'node-name': DISK_NODE }),
    ],
    ...['-device', `virtio-blk-pci,drive=${DISK_NODE},id=${DISK_NODE}-blk`],
    '-S',
    ...extra,
  ];
  const child: ChildProcess = host.spawn('qemu-system-x86_64', args, {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const keep = (chunk: Buffer): void => {
    output = (output + chunk.toString('utf8')).slice(-8192);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = once(child, 'exit').then(() => undefined);
  const failure = (): string | undefined =>
    child.exitCode === null && child.signalCode === null
      ? undefined
      : `QEMU at ${side} exited (${child.exitCode ?? child.signalCode}): ${output}`;
  let qmp: QmpClient | undefined;
  try {
    qmp = await QmpClient.connect(qmpPath, { timeoutMs: QMP_TIMEOUT_MS });
    await stamper.socket(side, consolePath, QMP_TIMEOUT_MS);
  } catch (error) {
    child.kill('SIGKILL');
    await exited;
    throw new Error(`QEMU at ${side} did not start: ${failure() ?? ''}`, { cause: error });
  }
  const client = qmp;
  const kill = async (): Promise<void> => {
    if (failure() === undefined) child.kill('SIGKILL');
    await exited;
    await client.close();
  };
  return {
    qmp: client,
    failure,
    quit: async () => {
      await client.execute('quit').catch(() => undefined);
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
      await kill();
    },
    kill,
  };
}
