/**
 * The link between the hosts cut while a running VM's memory moves (issue 8, "Failures, each a
 * test"): the source notices (its NBD requests time out, the memory stream stalls), rolls back,
 * and the guest runs on with every acknowledged write; the destination, which could not be told,
 * is told again until the link is back, and drops everything. Apart from vm-motion-failures.test.ts because waiting out
 * the timeouts takes a minute.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import { assertFailedBack, moveWithFault, withVmHosts } from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];

netnsTest(
  'vm motion fails back: the link is cut during the memory migration',
  { tools: TOOLS, timeoutMs: 240_000 },
  async () => {
    await withVmHosts(async (served, pair) => {
      const { a, b } = served;
      const { vm, job } = await moveWithFault(served, () => pair.cutLink('both'), 180_000);
      assert.equal(job.state, 'failed');
      // The guest ran on all along; b could not be told then, and is told once the link is back.
      await pair.restoreLink('both');
      await assertFailedBack(a, b, 'web', vm.pid);
    });
  },
);
