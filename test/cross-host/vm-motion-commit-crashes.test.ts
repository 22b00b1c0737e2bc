/**
 * `kill -9` of an agent at or after the commit of a running VM's move to another host (issue 8,
 * "Failures, each a test"): the source after the commit, the destination at its commit point.
 * After the restart exactly one QEMU runs the guest, on the destination's disks, with every
 * block it acknowledged. Split from vm-motion-crashes.test.ts to keep each file short.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import { assertMovedForward, startWriterVm, tailConsole, withVmHosts } from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];

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
