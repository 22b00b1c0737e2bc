/**
 * Running VMs moved between two real hosts with their storage (issue 8, "Done means"): two
 * network namespaces joined by a veth, each running `ferry serve` and with a bridge of its own
 * (br0 on a, br1 on b). A real Linux guest (test/guest/) writes and checks numbered blocks on
 * its disk and keeps a counter in memory while `ferry migrate web --vm --to-host b
 * --network-map br0=br1` moves it, for every method. After the move it runs on b — the same
 * boot, its counter going on, its MAC announced on br1 — a holds neither the VM nor its disk,
 * and every block the guest acknowledged, before and after, is on b's image.
 */
import assert from 'node:assert/strict';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { parseGuestLog } from '../guest/guest-log.js';
import { netnsTest } from './netns-test.js';
import {
  ackCount,
  assertMovedForward,
  holdings,
  readWhole,
  startWriterVm,
  stopAndVerify,
  tailConsole,
  vmOn,
  waitFor,
  watchAnnouncement,
  withVmHosts,
} from './vm-guest.js';

interface JobJson {
  readonly events: readonly { type: string; message: string | null }[];
  readonly state: string;
  readonly method: string;
  readonly error: { code: string; message: string } | null;
  readonly memory: { qemuDowntimeMs: number; storageSwitchoverMs: number; pauseMs: number } | null;
}

netnsTest(
  'vm motion: a running guest moves to host b with its disk and memory, for every method',
  { tools: ['qemu-system-x86_64', 'tcpdump'], timeoutMs: 600_000 },
  async (t) => {
    await withVmHosts(async ({ a, b }) => {
      for (const method of METHOD_NAMES) {
        const name = `web-${method}`;
        const before = await startWriterVm(a, name, { network: 'br0' });
        const mac = before.nics[0]?.mac ?? '';
        const source = await tailConsole(before.console);
        const announced = watchAnnouncement(b.host, 'br1', mac);
        const atStart = await ackCount(before.console);
        try {
          const job = JSON.parse(
            await a.ferryOk(
              [
                'migrate',
                name,
                '--vm',
                '--to-host',
                'b',
                '--network-map',
                'br0=br1',
                '--method',
                method,
                '--json',
              ],
              300_000,
            ),
          ) as JobJson;
          assert.equal(job.state, 'succeeded', `${method}: ${JSON.stringify(job.error)}`);
          assert.ok(job.memory !== null, `${method}: the memory moved`);
          assert.ok(
            job.events.some((event) => /memory migration to .* over TLS/.test(event.message ?? '')),
            `${method}: the memory went over TLS`,
          );
          t.diagnostic(`${method}: ${JSON.stringify(job.memory)}`);
          const after = await vmOn(b, name);
          assert.equal(after.state, 'running', `${method}: the guest runs on b`);
          assert.equal(after.nics[0]?.mac, mac, `${method}: same MAC`);
          assert.equal(after.nics[0]?.network, 'br1', `${method}: NIC remapped to br1`);
          assert.match(
            await announced.seen,
            new RegExp(mac, 'i'),
            `${method}: MAC announced on br1`,
          );
          const log = await assertMovedForward(a, b, name, source.text);
          // b's console alone tells the whole story: the source's last lines came with the commit.
          const atB = parseGuestLog(await readWhole(after.console));
          assert.deepEqual(atB.problems, [], `${method}: b's console has every line, in order`);
          assert.equal(
            atB.lastAcked,
            log.lastAcked,
            `${method}: b's console ends where the guest did`,
          );
          assert.ok(
            log.lastAcked > 0 && atStart < parseGuestLog(await source.text()).lastAcked,
            `${method}: the guest wrote while its disk and memory moved`,
          );
        } finally {
          announced.stop();
          await source.close();
        }
      }
    });
  },
);

netnsTest(
  'vm motion: a stopped VM moves to host b with its home and disk, and starts there',
  { tools: ['qemu-system-x86_64'], timeoutMs: 120_000 },
  async () => {
    await withVmHosts(async ({ a, b }) => {
      const before = await startWriterVm(a, 'cold', { network: 'br0' });
      await a.ferryOk(['vm', 'stop', 'cold', '--force']);
      const written = await readWhole(before.console);
      const job = JSON.parse(
        await a.ferryOk([
          'migrate',
          'cold',
          '--vm',
          '--to-host',
          'b',
          '--network-map',
          'br0=br1',
          '--json',
        ]),
      ) as JobJson;
      assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
      assert.equal(job.memory, null, 'a stopped VM has no memory to move');
      const moved = await vmOn(b, 'cold');
      assert.equal(moved.state, 'stopped');
      assert.equal(moved.nics[0]?.network, 'br1');
      assert.deepEqual(await holdings(a), { vms: 0, disks: 0 });
      // Every block the guest acknowledged on a is on b, and b's console has a's history.
      await stopAndVerify(b, 'cold', async () => written);
      assert.ok((await readWhole(moved.console)).startsWith(written));
      await b.ferryOk(['vm', 'start', 'cold']);
      const bootsBefore = parseGuestLog(await readWhole(moved.console)).bootIds.length;
      await waitFor(
        async () => parseGuestLog(await readWhole(moved.console)).bootIds.length > bootsBefore,
        60_000,
      );
      await b.ferryOk(['vm', 'stop', 'cold', '--force']);
    });
  },
);
