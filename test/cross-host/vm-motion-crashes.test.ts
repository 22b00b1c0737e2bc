/**
 * `kill -9` of either agent while a running VM moves to another host (issue 8, "Failures, each
 * a test"): the source in each phase (copy, memory, before the commit, after it), the
 * destination at its commit point. After the restart exactly one QEMU runs the guest, on the
 * committed disks, with every block it acknowledged: on the source when the commit had not
 * happened, on the destination when it had.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import {
  assertFailedBack,
  assertMovedForward,
  startWriterVm,
  tailConsole,
  vmOn,
  waitFor,
  withVmHosts,
} from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];

for (const point of ['copy', 'memory', 'before-commit'] as const) {
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
          await assertMovedForward(a, b, 'web', source.text);
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
          await assertMovedForward(a, b, 'web', source.text);
        } finally {
          await source.close();
        }
      },
      { b: { FERRY_CRASH_AT: 'receive-commit' } },
    );
  },
);
