/**
 * A running VM's move to another host that fails, or whose agents die (issue 8, "Failures, each
 * a test"). Before `migrate-continue` — the user cancels, the destination QEMU dies, the link is
 * cut, the destination agent is killed — the guest resumes on its source disks with every
 * acknowledged write and the destination keeps nothing. `kill -9` of the source agent in each
 * phase, or of the destination at its commit: after the restart exactly one QEMU runs the guest,
 * on the committed disks. A memory migration that cannot converge within `--max-downtime` fails
 * cleanly, the guest still running on the source.
 *
 * The memory phase is made long with `--speed` (it caps QEMU's memory stream too), so a fault
 * lands in it; each test waits for the job to report the phase before acting.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { parseGuestLog } from '../guest/guest-log.js';
import { createHostPair, type HostPair } from './netns.js';
import { netnsTest } from './netns-test.js';
import { type ServedHost, type ServedPair, startServedPair } from './two-serves.js';
import {
  ackCount,
  addBridge,
  holdings,
  isFinished,
  joinConsoles,
  qemuPidsOf,
  readWhole,
  startWriterVm,
  stopAndVerify,
  tailConsole,
  type VmJobJson,
  vmOn,
  waitFor,
  waitForJob,
} from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];
const SLOW_MEMORY = ['--speed', '2M'];

async function withVmHosts(
  body: (served: ServedPair, pair: HostPair) => Promise<void>,
  env: { a?: Record<string, string>; b?: Record<string, string> } = {},
): Promise<void> {
  const pair = await createHostPair();
  try {
    const served = await startServedPair(pair, env);
    await addBridge(served.a, 'br0');
    await addBridge(served.b, 'br1');
    await body(served, pair);
  } finally {
    await pair.dispose();
  }
}

/** Starts the move of `name` to b, detached; resolves with the job's id. */
async function startMove(a: ServedHost, name: string, extra: readonly string[]): Promise<string> {
  const job = JSON.parse(
    await a.ferryOk([
      'migrate',
      name,
      '--vm',
      '--to-host',
      'b',
      '--network-map',
      'br0=br1',
      '--detach',
      '--json',
      ...extra,
    ]),
  ) as VmJobJson;
  return job.id;
}

/**
 * The move of `name` failed back: the guest runs on a in the one QEMU it had, goes on writing,
 * b holds nothing, and after a stop every acknowledged block is on a's disk.
 */
async function assertFailedBack(
  a: ServedHost,
  b: ServedHost,
  name: string,
  pid: number | null,
): Promise<void> {
  const vm = await vmOn(a, name);
  assert.equal(vm.state, 'running', 'the guest runs on a');
  assert.equal(vm.pid, pid, 'in the QEMU it had');
  assert.deepEqual(await qemuPidsOf(name), [pid], 'exactly one QEMU runs the guest');
  const acked = await ackCount(vm.console);
  await waitFor(async () => (await ackCount(vm.console)) >= acked + 20, 60_000);
  await waitFor(async () => {
    const held = await holdings(b);
    return held.vms === 0 && held.disks === 0;
  }, 30_000);
  await stopAndVerify(a, name, () => readWhole(vm.console));
}

netnsTest(
  'vm motion fails back: cancelled during the memory migration',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(async ({ a, b }) => {
      const vm = await startWriterVm(a, 'web', { network: 'br0' });
      const id = await startMove(a, 'web', SLOW_MEMORY);
      await waitForJob(a, id, (job) => job.phase === 'memory' || isFinished(job));
      await a.ferryOk(['job', 'cancel', id]);
      const job = await waitForJob(a, id, isFinished);
      assert.equal(job.state, 'cancelled', JSON.stringify(job.error));
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);

netnsTest(
  'vm motion fails back: the destination QEMU dies during the memory migration',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(async ({ a, b }) => {
      const vm = await startWriterVm(a, 'web', { network: 'br0' });
      const id = await startMove(a, 'web', SLOW_MEMORY);
      await waitForJob(a, id, (job) => job.phase === 'memory' || isFinished(job));
      const destination = (await qemuPidsOf('web')).filter((pid) => pid !== vm.pid);
      assert.equal(destination.length, 1, 'b started a QEMU waiting for the memory');
      process.kill(destination[0] ?? 0, 'SIGKILL');
      const job = await waitForJob(a, id, isFinished);
      assert.equal(job.state, 'failed');
      assert.match(job.error?.message ?? '', /memory migration/);
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);

netnsTest(
  'vm motion fails back: the destination agent is killed during the memory migration',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(async ({ a, b }) => {
      const vm = await startWriterVm(a, 'web', { network: 'br0' });
      const id = await startMove(a, 'web', SLOW_MEMORY);
      await waitForJob(a, id, (job) => job.phase === 'memory' || isFinished(job));
      await b.serve.kill('SIGKILL');
      const job = await waitForJob(a, id, isFinished);
      assert.equal(job.state, 'failed');
      // Its restart deletes what it had received and kills the QEMU it had started.
      await b.restart();
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);

netnsTest(
  'vm motion fails back: the link is cut during the memory migration',
  { tools: TOOLS, timeoutMs: 240_000 },
  async () => {
    await withVmHosts(async ({ a, b }, pair) => {
      const vm = await startWriterVm(a, 'web', { network: 'br0' });
      const id = await startMove(a, 'web', SLOW_MEMORY);
      await waitForJob(a, id, (job) => job.phase === 'memory' || isFinished(job));
      await pair.cutLink('both');
      const job = await waitForJob(a, id, isFinished, 180_000);
      assert.equal(job.state, 'failed');
      // The guest ran on all along; b could not be told, so its restart cleans up.
      await pair.restoreLink('both');
      await b.serve.kill('SIGKILL');
      await b.restart();
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);

netnsTest(
  'vm motion: a memory migration that cannot converge within --max-downtime fails cleanly',
  { tools: TOOLS, timeoutMs: 240_000 },
  async () => {
    await withVmHosts(async ({ a, b }) => {
      // 16 MiB rewritten as fast as the guest can, against a 1 ms stop at 100 MiB/s: 100 KiB.
      const vm = await startWriterVm(a, 'web', { network: 'br0', dirtyMib: 16 });
      const id = await startMove(a, 'web', ['--max-downtime', '1ms', '--speed', '100M']);
      const job = await waitForJob(a, id, isFinished, 200_000);
      assert.equal(job.state, 'failed');
      assert.match(job.error?.message ?? '', /did not converge.*auto-converge/);
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);

for (const point of ['memory', 'before-commit'] as const) {
  netnsTest(
    `vm motion: kill -9 of the source agent at ${point}: the guest resumes on a`,
    { tools: TOOLS, timeoutMs: 180_000 },
    async () => {
      await withVmHosts(
        async ({ a, b }) => {
          const vm = await startWriterVm(a, 'web', { network: 'br0' });
          await a.ferry(['migrate', 'web', '--vm', '--to-host', 'b', '--network-map', 'br0=br1']);
          await a.serve.exited;
          await a.restart();
          await waitFor(async () => (await vmOn(a, 'web')).state === 'running', 60_000).catch(
            async (error: unknown) => {
              const state = (await vmOn(a, 'web')).state;
              throw new Error(`VM web is ${state}:\n${a.serve.logLines.join('\n')}`, {
                cause: error,
              });
            },
          );
          await assertFailedBack(a, b, 'web', vm.pid);
        },
        { a: { FERRY_CRASH_AT: point } },
      );
    },
  );
}

netnsTest(
  'vm motion: kill -9 of the source agent after the commit: the move finishes forward',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(
      async ({ a, b }) => {
        const vm = await startWriterVm(a, 'web', { network: 'br0' });
        const source = await tailConsole(vm.console);
        try {
          await a.ferry(['migrate', 'web', '--vm', '--to-host', 'b', '--network-map', 'br0=br1']);
          await a.serve.exited;
          await a.restart();
          await assertMovedForward(a, b, source.text);
        } finally {
          await source.close();
        }
      },
      { a: { FERRY_CRASH_AT: 'after-commit' } },
    );
  },
);

netnsTest(
  'vm motion: kill -9 of the destination agent at its commit: the move finishes forward',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(
      async ({ a, b }) => {
        const vm = await startWriterVm(a, 'web', { network: 'br0' });
        const source = await tailConsole(vm.console);
        try {
          const moving = a.ferry(
            ['migrate', 'web', '--vm', '--to-host', 'b', '--network-map', 'br0=br1', '--json'],
            300_000,
          );
          await b.serve.exited;
          // The source holds the guest stopped and asks until b answers.
          await b.restart();
          const result = await moving;
          assert.equal(result.code, 0, result.stdout + result.stderr);
          await assertMovedForward(a, b, source.text);
        } finally {
          await source.close();
        }
      },
      { b: { FERRY_CRASH_AT: 'receive-commit' } },
    );
  },
);

/**
 * The move of `web` went forward: the guest runs on b in exactly one QEMU, the same boot going
 * on, a holds nothing, and every acknowledged block is on b's disk.
 */
async function assertMovedForward(
  a: ServedHost,
  b: ServedHost,
  sourceConsole: () => Promise<string>,
): Promise<void> {
  await waitFor(async () => {
    const held = await holdings(a);
    return held.vms === 0 && held.disks === 0;
  }, 120_000);
  const moved = await vmOn(b, 'web');
  assert.equal(moved.state, 'running', 'the guest runs on b');
  assert.deepEqual(await qemuPidsOf('web'), [moved.pid], 'exactly one QEMU runs the guest');
  const atMove = parseGuestLog(await sourceConsole()).lastAcked;
  await waitFor(async () => (await ackCount(moved.console)) >= atMove + 20, 60_000);
  const whole = async (): Promise<string> =>
    joinConsoles(await sourceConsole(), await readFile(moved.console, 'utf8'));
  await stopAndVerify(b, 'web', whole);
}
