/**
 * VMs that run (issue 8) through the product: `ferry serve` as a child process, the recording
 * guest (test/guest) booted under TCG as a Ferry VM whose /dev/vda is a Ferry disk on the agent's
 * local NBD socket, driven only through the `ferry` command. Each scenario ends with the guest
 * stopped and its disk image read directly: every write the guest acknowledged must be there.
 *
 * One guest at a time (TCG on two cores), small disks, a region of 1024 blocks (4 MiB).
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { DiskInfo } from '../../src/host/agent.js';
import { tapName } from '../../src/host/taps.js';
import { stableMac } from '../../src/host/vm-config.js';
import type { VmInfo } from '../../src/host/vm-service.js';
import {
  createHostPair,
  type Host,
  isNetnsAvailable,
  netnsUnavailableReason,
} from '../cross-host/netns.js';
import { startServeIn } from '../cross-host/serve-in.js';
import { joinConsoles } from '../cross-host/vm-guest.js';
import { guestImage } from '../guest/guest-image.js';
import type { GuestLog } from '../guest/guest-log.js';
import { parseGuestLog, verifyDisk } from '../guest/guest-log.js';
import { makeTempDir } from '../host/temp-dir.js';
import { FERRY_BIN, runFerry, type ServeProcess, startServe } from './ferry-process.js';
import {
  consoleAt,
  type FerryCli,
  ferryCli,
  guestCreateArgs,
  holdConsole,
  IDLE_APPEND,
  isAlive,
  openImage,
  QemuReaper,
  vmTest,
  waitForGuest,
  writerAppend,
} from './vm-guest.js';

const BLOCKS = 1024;
const ACKS_BEFORE = 50;
/** Acks the guest must add after an event (an agent restart, a move) to count as going on. */
const ACKS_AFTER = 50;
const BOOT_TIMEOUT_MS = 30_000;
/** QEMU's NBD client retries with a growing delay (up to 16 s in 7.2) once the agent is back. */
const RESUME_TIMEOUT_MS = 40_000;

/** `ferry serve` on loopback with `dataDir`; SIGKILLed at the end if still running. */
async function serveOn(t: TestContext, dataDir: string): Promise<ServeProcess> {
  const serve = await startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  t.after(async () => {
    if (serve.child.exitCode !== null || serve.child.signalCode !== null) return;
    serve.child.kill('SIGTERM');
    await serve.exited;
  });
  return serve;
}

function cliOf(serve: ServeProcess): FerryCli {
  return ferryCli((args) => runFerry(args, { FERRY_API: serve.ready.apiUrl }));
}

/** The guest's log checked for health: one boot, no contract break, nothing bad read back. */
function assertHealthy(log: GuestLog): void {
  assert.equal(log.bootIds.length, 1, `the guest booted ${log.bootIds.length} times`);
  assert.deepEqual(log.problems, []);
  assert.deepEqual(log.bad, []);
  assert.deepEqual(log.errors, [], 'a guest write failed (the NBD reconnect should hold it)');
}

/** Stops VM `name` at once and checks its disk's image against everything the guest acked. */
async function stopAndVerify(
  cli: FerryCli,
  name: string,
  disk: string,
  readConsole: () => Promise<string>,
): Promise<GuestLog> {
  const shown = await cli.vm(name);
  const stopped = await cli.json<VmInfo>(['vm', 'stop', name, '--force']);
  assert.equal(stopped.state, 'stopped');
  assert.equal(stopped.pid, null);
  assert.ok(shown.pid !== null && !isAlive(shown.pid), `QEMU ${shown.pid} still runs after stop`);
  const log = parseGuestLog(await readConsole());
  assertHealthy(log);
  const image = await openImage((await cli.json<DiskInfo>(['disk', 'show', disk])).image);
  try {
    assert.deepEqual(await verifyDisk(image.read, log), [], `after ${log.lastAcked} acks`);
  } finally {
    await image.close();
  }
  return log;
}

vmTest(
  'vm run: the writer guest survives kill -9 of the agent; every acked block is on the disk',
  { timeoutMs: 90_000 },
  async (t) => {
    const image = await guestImage();
    const dataDir = join(await makeTempDir(), 'data');
    const reaper = new QemuReaper();
    t.after(() => reaper.killAll());
    let serve = await serveOn(t, dataDir);
    let cli = cliOf(serve);

    const created = await cli.json<VmInfo>(
      guestCreateArgs('web1', 'web1-os:64M', image, writerAppend(BLOCKS)),
    );
    reaper.addPidFile(join(dataDir, 'run', 'web1', 'qemu.pid'));
    assert.equal(created.state, 'stopped');
    assert.deepEqual([created.memoryBytes, created.accel], [256 * 1024 * 1024, 'tcg']);
    const started = await cli.json<VmInfo>(['vm', 'start', 'web1']);
    reaper.addPid(started.pid);
    assert.equal(started.state, 'running');
    assert.ok(started.pid !== null && isAlive(started.pid), `pid ${started.pid}`);
    const pid = started.pid;
    const readConsole = consoleAt(started.console);
    await waitForAcks(readConsole, ACKS_BEFORE, 'first acks', pid, BOOT_TIMEOUT_MS);

    const shown = await cli.vm('web1');
    assert.deepEqual([shown.state, shown.pid], ['running', pid]);
    await cli.refused(['disk', 'rm', 'web1-os'], /belongs to VM web1/);
    await cli.refused(['vm', 'rm', 'web1'], /VM web1 is running; stop it first/);
    const printed = await cli.ok(['vm', 'log', 'web1', '--bytes', '4K']);
    assert.match(printed, /^ack \d+ \d+\r?$/m, 'ferry vm log prints the end of the console');

    // kill -9 of the agent: QEMU runs on, its disk I/O waits for the agent's socket.
    serve.child.kill('SIGKILL');
    await serve.exited;
    assert.ok(isAlive(pid), 'QEMU died with the agent');
    const atKill = parseGuestLog(await readConsole());
    const killedAt = Date.now();
    serve = await serveOn(t, dataDir);
    cli = cliOf(serve);
    const back = await cli.vm('web1');
    assert.deepEqual(
      [back.state, back.pid],
      ['running', pid],
      'the restarted agent took QEMU back',
    );
    const resumed = await waitForAcks(
      readConsole,
      atKill.lastAcked + ACKS_AFTER,
      'acks after the agent restart',
      pid,
      RESUME_TIMEOUT_MS,
    );
    assert.deepEqual(resumed.bootIds, atKill.bootIds, 'the guest rebooted');
    t.diagnostic(`${ACKS_AFTER} more acks ${Date.now() - killedAt} ms after the kill`);

    const log = await stopAndVerify(cli, 'web1', 'web1-os', readConsole);
    t.diagnostic(`acks: ${atKill.lastAcked} at the kill, ${log.lastAcked} in all`);
    await cli.ok(['vm', 'rm', 'web1']);
    await cli.ok(['disk', 'rm', 'web1-os']);
  },
);

/**
 * `ferry serve` with datastores local and fast, and VM web1 (the writer guest, its 64 MiB disk
 * web1-os) on local, running and past its first acks. Its console file is held open: a move
 * deletes it once QEMU writes the new home's, and the guest's story is this one, then what
 * follows in the new home's.
 */
async function writerOnLocal(t: TestContext): Promise<{
  cli: FerryCli;
  dataDir: string;
  pid: number;
  guestConsole: Awaited<ReturnType<typeof holdConsole>>;
}> {
  const image = await guestImage();
  const dir = await makeTempDir();
  const fast = join(dir, 'fast');
  await mkdir(fast);
  const reaper = new QemuReaper();
  t.after(() => reaper.killAll());
  const dataDir = join(dir, 'data');
  const cli = cliOf(await serveOn(t, dataDir));
  await cli.ok(['datastore', 'add', 'fast', fast]);
  await cli.json<VmInfo>(guestCreateArgs('web1', 'web1-os:64M', image, writerAppend(BLOCKS)));
  reaper.addPidFile(join(dataDir, 'run', 'web1', 'qemu.pid'));
  const started = await cli.json<VmInfo>(['vm', 'start', 'web1']);
  reaper.addPid(started.pid);
  const pid = started.pid ?? -1;
  const guestConsole = await holdConsole(started.console);
  t.after(() => guestConsole.close());
  await waitForAcks(guestConsole.read, ACKS_BEFORE, 'first acks', pid, BOOT_TIMEOUT_MS);
  return { cli, dataDir, pid, guestConsole };
}

vmTest(
  'vm run: a running VM moves to another datastore while the guest writes',
  { timeoutMs: 60_000 },
  async (t) => {
    const { cli, dataDir, pid, guestConsole } = await writerOnLocal(t);
    const before = parseGuestLog(await guestConsole.read());
    // Rate-limited so the copy lasts a while under guest writes (about 1 MiB is allocated).
    const moveStartedAt = Date.now();
    const job = await cli.json<{ state: string; vm: string; error: unknown; bytesCopied: number }>([
      'migrate',
      'web1',
      '--vm',
      '--to',
      'fast',
      '--speed',
      '256K',
    ]);
    const moveMs = Date.now() - moveStartedAt;
    assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
    assert.equal(job.vm, 'web1');
    const during = parseGuestLog(await guestConsole.read()).lastAcked - before.lastAcked;
    assert.ok(during > 0, `the guest acked nothing during the ${moveMs} ms move`);
    t.diagnostic(`move: ${moveMs} ms, ${job.bytesCopied} bytes copied, ${during} acks meanwhile`);
    const moved = await cli.vm('web1');
    assert.deepEqual(
      [moved.datastore, moved.state, moved.pid],
      ['fast', 'running', pid],
      'the same QEMU runs on',
    );
    assert.equal((await cli.json<DiskInfo>(['disk', 'show', 'web1-os'])).datastore, 'fast');
    const local = join(dataDir, 'datastores', 'local');
    assert.deepEqual(
      (await readdir(local)).filter((f) => !f.startsWith('.')),
      [],
    );
    // The console follows the home: QEMU appends to the new home's log after the move.
    const wholeConsole = async (): Promise<string> =>
      joinConsoles(await guestConsole.read(), await readFile(moved.console, 'utf8'));
    const after = await waitForAcks(
      wholeConsole,
      before.lastAcked + ACKS_AFTER,
      'acks after the move',
      pid,
      RESUME_TIMEOUT_MS,
    );
    const atNewHome = parseGuestLog(await readFile(moved.console, 'utf8'));
    assert.ok(
      atNewHome.lastAcked >= after.lastAcked,
      `${moved.console} ends at ack ${atNewHome.lastAcked}; the guest is at ${after.lastAcked}`,
    );

    const log = await stopAndVerify(cli, 'web1', 'web1-os', wholeConsole);
    t.diagnostic(`acks: ${before.lastAcked} before the move, ${log.lastAcked} in all`);
  },
);

vmTest(
  'vm run: an agent restarted after a running VM moved takes the same QEMU back',
  { timeoutMs: 60_000 },
  async (t) => {
    const image = await guestImage();
    const dir = await makeTempDir();
    const dataDir = join(dir, 'data');
    const fast = join(dir, 'fast');
    await mkdir(fast);
    const reaper = new QemuReaper();
    t.after(() => reaper.killAll());
    let serve = await serveOn(t, dataDir);
    let cli = cliOf(serve);
    await cli.ok(['datastore', 'add', 'fast', fast]);
    await cli.json<VmInfo>(guestCreateArgs('web1', 'web1-os:16M', image, IDLE_APPEND));
    reaper.addPidFile(join(dataDir, 'run', 'web1', 'qemu.pid'));
    const started = await cli.json<VmInfo>(['vm', 'start', 'web1']);
    reaper.addPid(started.pid);
    const job = await cli.json<{ state: string }>(['migrate', 'web1', '--vm', '--to', 'fast']);
    assert.equal(job.state, 'succeeded');

    serve.child.kill('SIGKILL');
    await serve.exited;
    serve = await serveOn(t, dataDir);
    cli = cliOf(serve);
    const back = await cli.vm('web1');
    assert.deepEqual(
      [back.datastore, back.state, back.pid],
      ['fast', 'running', started.pid],
      'the restarted agent took back the QEMU that runs the moved VM',
    );
    const again = await cli.run(['vm', 'start', 'web1', '--json']);
    if (again.code === 0) reaper.addPid((JSON.parse(again.stdout) as VmInfo).pid);
    assert.notEqual(again.code, 0, 'a second QEMU was started for VM web1');
    assert.match(again.stderr, /VM web1 is already running/);
    await cli.json<VmInfo>(['vm', 'stop', 'web1', '--force']);
  },
);

vmTest(
  'vm run: maintenance mode moves a running VM, its home and disk, off its datastore while the guest writes',
  { timeoutMs: 90_000 },
  async (t) => {
    const { cli, dataDir, pid, guestConsole } = await writerOnLocal(t);
    await cli.ok(['cluster', 'create', 'gold', '--datastore', 'local', '--datastore', 'fast']);
    const before = parseGuestLog(await guestConsole.read());

    const entering = await cli.ok(['datastore', 'maintenance', 'local']);
    assert.match(entering, /Datastore local is entering maintenance: \d+ move\(s\) queued/);
    // On once the VM (home and disk) has left; new disks are refused there meanwhile and after.
    const deadline = Date.now() + 60_000;
    let state = 'entering';
    while (state !== 'on' && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      const listed = await cli.json<{ name: string; maintenance?: string }[]>([
        'datastore',
        'list',
      ]);
      state = listed.find((one) => one.name === 'local')?.maintenance ?? 'off';
    }
    assert.equal(state, 'on', 'local emptied within a minute');
    await cli.refused(
      ['disk', 'create', 'extra', '--size', '1M', '--datastore', 'local'],
      /in maintenance/,
    );
    const moved = await cli.vm('web1');
    assert.deepEqual(
      [moved.datastore, moved.state, moved.pid],
      ['fast', 'running', pid],
      'the same QEMU runs on, its home on fast',
    );
    assert.equal((await cli.json<DiskInfo>(['disk', 'show', 'web1-os'])).datastore, 'fast');
    const local = join(dataDir, 'datastores', 'local');
    assert.deepEqual(
      (await readdir(local)).filter((f) => !f.startsWith('.')),
      [],
    );

    const wholeConsole = async (): Promise<string> =>
      joinConsoles(await guestConsole.read(), await readFile(moved.console, 'utf8'));
    await waitForAcks(
      wholeConsole,
      parseGuestLog(await wholeConsole()).lastAcked + ACKS_AFTER,
      'acks after the maintenance moves',
      pid,
      RESUME_TIMEOUT_MS,
    );
    const log = await stopAndVerify(cli, 'web1', 'web1-os', wholeConsole);
    t.diagnostic(`acks: ${before.lastAcked} before maintenance, ${log.lastAcked} in all`);
    assert.match(await cli.ok(['datastore', 'maintenance', 'local', '--exit']), /left maintenance/);
  },
);

/** `ferry serve` in a namespace of its own with bridge br0, and the CLI run inside it. */
async function serveInNamespace(t: TestContext): Promise<{ host: Host; cli: FerryCli }> {
  const pair = await createHostPair();
  t.after(() => pair.dispose());
  const host = pair.a;
  for (const args of [
    ['link', 'add', 'br0', 'type', 'bridge'],
    ['link', 'set', 'br0', 'up'],
  ]) {
    const result = await host.exec('ip', args);
    assert.equal(result.code, 0, `ip ${args.join(' ')}: ${result.stderr}`);
  }
  const dataDir = join(await makeTempDir(), 'data');
  // Loopback inside the namespace: the API takes calls without a credential only from there.
  const serve = await startServeIn(host, ['--data', dataDir, '--api', '127.0.0.1:0']);
  t.after(async () => {
    await serve.kill();
  });
  const env = { ...process.env, FERRY_API: serve.ready.apiUrl };
  const cli = ferryCli((args) =>
    host.exec(process.execPath, [FERRY_BIN, ...args], { env, timeoutMs: 20_000 }),
  );
  return { host, cli };
}

const netnsBlocker = (): string | undefined =>
  isNetnsAvailable() ? undefined : netnsUnavailableReason();

vmTest(
  'vm run: a NIC is a tap on its network bridge while the VM runs',
  { timeoutMs: 60_000, blocker: netnsBlocker },
  async (t) => {
    const image = await guestImage();
    const { host, cli } = await serveInNamespace(t);
    const reaper = new QemuReaper();
    t.after(() => reaper.killAll());
    await cli.refused(['network', 'add', 'lan', '--bridge', 'br9'], /there is no bridge br9/);
    await cli.ok(['network', 'add', 'lan', '--bridge', 'br0']);

    const created = await cli.json<VmInfo>([
      ...guestCreateArgs('web1', 'web1-os:16M', image, IDLE_APPEND),
      ...['--nic', 'network=lan'],
    ]);
    // <dataDir>/datastores/local/web1 is the home; the pid file is in <dataDir>/run/web1.
    reaper.addPidFile(join(created.home, '..', '..', '..', 'run', 'web1', 'qemu.pid'));
    const mac = stableMac('web1', 0);
    assert.deepEqual(created.nics, [{ network: 'lan', mac }]);
    const started = await cli.json<VmInfo>(['vm', 'start', 'web1']);
    reaper.addPid(started.pid);
    const pid = started.pid ?? -1;
    assert.equal(started.state, 'running');
    assert.match(await cli.ok(['vm', 'show', 'web1']), new RegExp(`nics:\\s+lan ${mac}`));

    const tap = tapName('web1', 0);
    const enslaved = await host.exec('ip', ['-o', 'link', 'show', 'master', 'br0']);
    assert.equal(enslaved.code, 0, enslaved.stderr);
    assert.match(enslaved.stdout, new RegExp(`^\\d+: ${tap}: .* master br0 `, 'm'));
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
    assert.ok(
      cmdline.some((arg) => arg.includes(`mac=${mac}`) && arg.includes('virtio-net')),
      `QEMU's NIC has MAC ${mac}: ${cmdline.join(' ')}`,
    );
    const booted = await waitForGuest(
      consoleAt(started.console),
      (text) => /^tick \d+ 0\r?$/m.test(text),
      'the idle guest ticking',
      pid,
      BOOT_TIMEOUT_MS,
    );
    assert.doesNotMatch(booted, /ferry-guest no eth0/, 'the guest has no NIC');
    await cli.refused(['network', 'rm', 'lan'], /network lan is used by VM web1/);

    const stopped = await cli.json<VmInfo>(['vm', 'stop', 'web1', '--force']);
    assert.equal(stopped.state, 'stopped');
    assert.ok(!isAlive(pid), `QEMU ${pid} still runs after stop`);
    const gone = await host.exec('ip', ['link', 'show', 'dev', tap]);
    assert.notEqual(gone.code, 0, `tap ${tap} is still there: ${gone.stdout}`);
    await cli.refused(['network', 'rm', 'lan'], /network lan is used by VM web1/);
    await cli.ok(['vm', 'rm', 'web1']);
    await cli.ok(['network', 'rm', 'lan']);
  },
);

vmTest(
  'vm create: bad input is refused, saying what is wrong, and nothing is created',
  { timeoutMs: 30_000, blocker: netnsBlocker },
  async (t) => {
    const image = await guestImage();
    const { cli } = await serveInNamespace(t);
    await cli.ok(['network', 'add', 'lan', '--bridge', 'br0']);
    const create = (name: string, more: readonly string[]): string[] => [
      ...guestCreateArgs(name, `${name}-os:16M`, image, IDLE_APPEND),
      ...more,
    ];
    await cli.refused(
      create('bad1', ['--nic', 'network=lan,mac=01:00:5e:00:00:01']),
      /MAC 01:00:5e:00:00:01 is a multicast address/,
    );
    await cli.refused(
      [...create('bad2', []), '--memory', '1K'],
      /memory 1024 bytes: give a whole number of MiB from 16M/,
    );
    await cli.refused(create('bad3', ['--nic', 'network=wan']), /no network named wan/);
    await cli.refused(
      ['vm', 'create', 'bad4', '--disk', 'bad4-os:16M', '--kernel', '/nonexistent/vmlinuz'],
      /\/nonexistent\/vmlinuz: .*ENOENT|no such file/i,
    );
    assert.deepEqual(await cli.json<VmInfo[]>(['vm', 'list']), []);
    assert.deepEqual(await cli.json<DiskInfo[]>(['disk', 'list']), []);
  },
);

async function waitForAcks(
  read: () => Promise<string>,
  acks: number,
  what: string,
  pid: number,
  timeoutMs: number,
): Promise<GuestLog> {
  const log = parseGuestLog(
    await waitForGuest(read, (text) => parseGuestLog(text).lastAcked >= acks, what, pid, timeoutMs),
  );
  assertHealthy(log);
  return log;
}
