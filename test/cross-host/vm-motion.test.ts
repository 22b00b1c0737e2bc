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
import { open } from 'node:fs/promises';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { parseGuestLog, verifyDisk } from '../guest/guest-log.js';
import { createHostPair, type HostPair } from './netns.js';
import { netnsTest } from './netns-test.js';
import { type ServedPair, startServedPair } from './two-serves.js';
import {
  ackCount,
  addBridge,
  joinConsoles,
  startWriterVm,
  tailConsole,
  vmOn,
  waitFor,
  watchAnnouncement,
} from './vm-guest.js';

interface JobJson {
  readonly events: readonly { type: string; message: string | null }[];
  readonly state: string;
  readonly method: string;
  readonly error: { code: string; message: string } | null;
  readonly memory: { qemuDowntimeMs: number; storageSwitchoverMs: number; pauseMs: number } | null;
}

async function withVmHosts(
  body: (served: ServedPair, pair: HostPair) => Promise<void>,
): Promise<void> {
  const pair = await createHostPair();
  try {
    const served = await startServedPair(pair);
    await addBridge(served.a, 'br0');
    await addBridge(served.b, 'br1');
    await body(served, pair);
  } finally {
    await pair.dispose();
  }
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
          // a holds neither the VM nor its disk.
          assert.notEqual((await a.ferry(['vm', 'show', name])).code, 0);
          assert.notEqual((await a.ferry(['disk', 'show', `${name}-os`])).code, 0);
          // The guest goes on writing on b: its acks pass those it had at the switchover.
          const sourceLog = await source.text();
          const atMove = parseGuestLog(sourceLog).lastAcked;
          await waitFor(async () => (await ackCount(after.console)) >= atMove + 30, 60_000);
          await b.ferryOk(['vm', 'stop', name, '--force']);
          const destination = await readWhole(after.console);
          const log = parseGuestLog(joinConsoles(sourceLog, destination));
          assert.equal(log.bootIds.length, 1, `${method}: one boot, the guest never restarted`);
          assert.deepEqual(log.problems, [], `${method}: acks and counter in sequence`);
          assert.deepEqual(log.bad, [], `${method}: every check the guest made passed`);
          assert.ok(log.lastAcked >= atMove + 30);
          const disk = JSON.parse(await b.ferryOk(['disk', 'show', `${name}-os`, '--json'])) as {
            image: string;
          };
          const image = await open(disk.image, 'r');
          try {
            const wrong = await verifyDisk(async (offset, length) => {
              const buffer = Buffer.alloc(length);
              await image.read(buffer, 0, length, offset);
              return buffer;
            }, log);
            assert.deepEqual(wrong, [], `${method}: every acknowledged block is on b`);
          } finally {
            await image.close();
          }
        } finally {
          announced.stop();
          await source.close();
        }
      }
    });
  },
);

async function readWhole(path: string): Promise<string> {
  const handle = await open(path, 'r');
  try {
    return (await handle.readFile()).toString('utf8');
  } finally {
    await handle.close();
  }
}
