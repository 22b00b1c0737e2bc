/**
 * A running VM's move to another host whose memory migration cannot converge within
 * --max-downtime (issue 8, "Failures, each a test"): the job fails, and the guest runs on, on the
 * source, with every block it acknowledged. Its own file: under load it takes minutes.
 */
import assert from 'node:assert/strict';
import { netnsTest } from './netns-test.js';
import {
  assertFailedBack,
  isFinished,
  startMove,
  startWriterVm,
  waitForJob,
  withVmHosts,
} from './vm-guest.js';

const TOOLS = ['qemu-system-x86_64'];

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
