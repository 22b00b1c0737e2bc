/**
 * `kill -9` of the source agent while a running VM moves to another host (issue 8, "Failures,
 * each a test"), before the commit: in the copy, the memory migration, and just before the
 * commit (after it: vm-motion-commit-crashes.test.ts). After the restart exactly one QEMU runs the guest, on the
 * committed disks, with every block it acknowledged: on the source when the commit had not
 * happened, on the destination when it had.
 */
import { netnsTest } from './netns-test.js';
import { assertFailedBack, startWriterVm, vmOn, waitFor, withVmHosts } from './vm-guest.js';

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
