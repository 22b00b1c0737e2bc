/**
 * A running VM's move to another host that fails (issue 8, "Failures, each a test"). Before
 * `migrate-continue` — the user cancels, the destination QEMU dies, the link is cut, the
 * destination agent is killed — the guest resumes on its source disks with every acknowledged
 * write and the destination keeps nothing. A memory migration that cannot converge within
 * `--max-downtime` fails cleanly, the guest still running on the source. (`kill -9` of either
 * agent: vm-motion-crashes.test.ts.)
 *
 * The memory phase is made long with `--speed` (it caps QEMU's memory stream too), so a fault
 * lands in it; each test waits for the job to report the phase before acting.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import { assertFailedBack, moveWithFault, qemuPidsOf, withVmHosts } from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];

netnsTest(
  'vm motion fails back: cancelled during the memory migration',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(async (served) => {
      const { a, b } = served;
      const { vm, job } = await moveWithFault(served, async (_, id) => {
        await a.ferryOk(['job', 'cancel', id]);
      });
      assert.equal(job.state, 'cancelled', JSON.stringify(job.error));
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);

netnsTest(
  'vm motion fails back: the destination QEMU dies during the memory migration',
  { tools: TOOLS, timeoutMs: 180_000 },
  async () => {
    await withVmHosts(async (served) => {
      const { a, b } = served;
      const { vm, job } = await moveWithFault(served, async (source) => {
        const destination = (await qemuPidsOf('web', [b])).filter((pid) => pid !== source.pid);
        assert.equal(destination.length, 1, 'b started a QEMU waiting for the memory');
        process.kill(destination[0] ?? 0, 'SIGKILL');
      });
      assert.equal(job.state, 'failed');
      assert.match(job.error?.message ?? '', /memory migration/);
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);
