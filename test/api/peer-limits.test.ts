import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import type { JobManager } from '../../src/control/job-manager.js';
import type { JobStatus } from '../../src/control/job-record.js';
import { JobErrorCode } from '../../src/control/job-states.js';
import type { Agent } from '../../src/host/agent.js';
import { PeerError } from '../../src/host/peer-client.js';
import { peerLinks } from '../../src/host/peer-link.js';
import { finished } from '../control/job-waits.js';
import { makeTempDir } from '../host/temp-dir.js';
import { startTwoHosts, type TestHost } from '../host/two-hosts.js';
import { prng, randomBytes } from '../migrate/harness.js';

/**
 * A cross-host move counts on both hosts (issue 10, vSphere's rule): the destination admits a
 * receive only within its own limits, and the source keeps a move the destination turned away
 * queued, says why, and asks again.
 */
const MIB = 1024 * 1024;
const DISK_BYTES = 8 * MIB;

/** Migrations holding host b's slots now: its running jobs and the moves arriving from a. */
function slotsHeld(agent: Agent, jobs: JobManager): number {
  const arriving = new Set(
    agent.receiver
      .list()
      .filter((receive) => !receive.committed)
      .map((receive) => receive.move),
  );
  const running = jobs
    .list()
    .filter((job) => ['running', 'switching', 'cancelling'].includes(job.state));
  return arriving.size + running.length;
}

test('peer limits: b at 1 migration takes one move from a at a time; the others wait on a, saying why', async () => {
  const hosts = await startTwoHosts();
  const { a, b } = hosts;
  let sampler: NodeJS.Timeout | undefined;
  try {
    b.jobs.setLimits({ host: 1, datastore: 8 });
    const random = prng(41);
    const data = new Map<string, Buffer>();
    for (const name of ['d1', 'd2', 'd3']) {
      await a.agent.createDisk({ name, sizeBytes: DISK_BYTES });
      const content = randomBytes(DISK_BYTES, random);
      const device = a.agent.exports.lookup(name)?.device;
      assert.ok(device);
      await device.write(0, content);
      data.set(name, content);
    }

    let mostHeldOnB = 0;
    const reasons = new Set<string>();
    const sample = (): void => {
      mostHeldOnB = Math.max(mostHeldOnB, slotsHeld(b.agent, b.jobs));
      for (const job of a.jobs.list()) {
        if (job.queue !== null) reasons.add(job.queue.waitingFor);
      }
    };
    sampler = setInterval(sample, 5);

    // a's own limit (2) lets two start; b's (1) takes one of them at a time.
    const started: JobStatus[] = [];
    for (const disk of ['d1', 'd2', 'd3']) {
      started.push(
        (await a.jobs.startMigration({
          disk,
          host: 'b',
          speedBytesPerSecond: 4 * MIB,
        })) as JobStatus,
      );
    }
    sample();

    // A local move on b waits behind a move arriving from a, and holds b's slot when it runs.
    await b.agent.addDatastore('second', await makeTempDir('ferry-b-second-'));
    await b.agent.createDisk({ name: 'local', sizeBytes: DISK_BYTES });
    const local = await b.jobs.startMigration({ disk: 'local', datastore: 'second' });

    for (const job of started) {
      const record = await finished(a.jobs, job.id);
      assert.equal(record.state, 'succeeded', JSON.stringify(record.error));
    }
    assert.equal((await finished(b.jobs, local.id)).state, 'succeeded');
    clearInterval(sampler);
    sample();

    assert.equal(mostHeldOnB, 1, 'host b never held more than its 1 migration');
    const turnedAway = [...reasons].filter((reason) => reason.startsWith('host b: busy: '));
    assert.ok(
      turnedAway.some((reason) =>
        /host limit: 1 of 1 migrations running on this host/.test(reason),
      ),
      `a's waiting jobs said why: ${[...reasons].join(' | ')}`,
    );
    for (const [name, content] of data) {
      const device = b.agent.exports.lookup(name)?.device;
      assert.ok(device, `${name} is served by b`);
      assert.ok((await device.read(0, DISK_BYTES)).equals(content), `${name} arrived whole`);
      assert.match(a.agent.exports.lookup(name)?.description ?? '', /on host b .*passed through/);
    }
  } finally {
    if (sampler !== undefined) clearInterval(sampler);
    await hosts.close();
  }
});

test('peer limits: a receive admitted holds a slot until released, and a full host says ERR_HOST_BUSY', async () => {
  const hosts = await startTwoHosts();
  try {
    const { b } = hosts;
    b.jobs.setLimits({ host: 2, datastore: 1 });
    const release = b.jobs.admitReceive('m1', ['default']);
    assert.equal(b.jobs.limits().running.host, 1);
    assert.deepEqual(b.jobs.limits().running.datastores, { default: 1 });
    assert.throws(
      () => b.jobs.admitReceive('m2', ['default']),
      (error: Error & { code?: string }) =>
        error.code === JobErrorCode.HostBusy &&
        /datastore default: 1 of 1 migrations/.test(error.message),
    );
    // Another datastore still has room; the host does too.
    const other = b.jobs.admitReceive('m3', ['other']);
    assert.throws(() => b.jobs.admitReceive('m4', ['another']), /host limit: 2 of 2/);
    release();
    other();
    assert.equal(b.jobs.limits().running.host, 0);
  } finally {
    await hosts.close();
  }
});

test('peer limits: a VM move asks for admission before its home files travel; the answer holds no slot', async () => {
  const hosts = await startTwoHosts();
  try {
    const { b } = hosts;
    const link = peerLinks(hosts.a.peers)('b');
    assert.ok(link !== undefined);
    const ask = { id: 'vm-move-1', disks: [{ from: 'local' }] };
    assert.deepEqual(await link.post('/v1/vm-receives/admission', ask), { admitted: true });
    assert.equal(b.jobs.limits().running.host, 0, 'the answer holds no slot');
    b.jobs.setLimits({ host: 1, datastore: 8 });
    const release = b.jobs.admitReceive('other', ['default']);
    await assert.rejects(
      link.post('/v1/vm-receives/admission', ask),
      (error: unknown) =>
        error instanceof PeerError &&
        error.remoteCode === JobErrorCode.HostBusy &&
        /host limit: 1 of 1/.test(error.message),
    );
    release();
    // Unsigned, it is refused like every peer route.
    const unsigned = await fetch(`${urlOfApi(b)}/v1/vm-receives/admission`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(ask),
    });
    assert.equal(unsigned.status, 401);
  } finally {
    await hosts.close();
  }
});

function urlOfApi(host: TestHost): string {
  return `http://127.0.0.1:${(host.api.server.address() as AddressInfo).port}`;
}
