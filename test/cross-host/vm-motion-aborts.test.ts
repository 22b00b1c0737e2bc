/**
 * A running VM's move to another host that ends early (issue 8, "Failures, each a test"): the
 * destination agent killed during the memory migration. The guest runs on, on the source, with
 * every block it acknowledged. Split from vm-motion-failures.test.ts to keep each file short.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import { assertFailedBack, moveWithFault, withVmHosts } from './vm-guest.js';

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
