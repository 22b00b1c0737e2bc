/**
 * A running VM's move to another host that ends early (issue 8, "Failures, each a test"): the
 * destination agent killed during the memory migration, and a memory migration that cannot
 * converge within --max-downtime. The guest runs on, on the source, with every block it
 * acknowledged. Split from vm-motion-failures.test.ts to keep each file short.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import {
  assertFailedBack,
  isFinished,
  moveWithFault,
  startMove,
  startWriterVm,
  waitForJob,
  withVmHosts,
} from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];

netnsTest(
  'vm motion fails back: the destination agent is killed during the memory migration',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(async (served) => {
      const { a, b } = served;
      const { vm, job } = await moveWithFault(served, async () => {
        await b.serve.kill('SIGKILL');
      });
      assert.equal(job.state, 'failed');
      // Its restart deletes what it had received and kills the QEMU it had started.
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
