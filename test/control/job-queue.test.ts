import assert from 'node:assert/strict';
import { test } from 'node:test';
import { JobManager } from '../../src/control/job-manager.js';
import type { JobEvent } from '../../src/control/job-record.js';
import { errorCodeOf, errorMessageOf } from '../../src/util/errors.js';
import { assertSameBytes } from '../migrate/harness.js';
import { FakeAgent } from './fake-agent.js';
import { finished, nextEvent } from './job-waits.js';

const MIB = 1024 * 1024;

function disks(
  names: Record<string, string>,
): Record<string, { datastore: string; sizeBytes: number }> {
  return Object.fromEntries(
    Object.entries(names).map(([name, datastore]) => [name, { datastore, sizeBytes: MIB }]),
  );
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.equal(errorCodeOf(error), code, errorMessageOf(error));
    return true;
  });
}

/** Opens the gate of the move of `disk` (moves are gated in the order they start). */
function openGateOf(agent: FakeAgent, disk: string): void {
  const index = agent.requests.findIndex((request) => request.name === disk);
  assert.ok(index >= 0, `disk ${disk} was started`);
  agent.gates[index]!.open();
}

test('job queue: beyond the host limit jobs wait, in order; cancel and speed work while queued', async () => {
  const agent = new FakeAgent(
    ['local', 'fast'],
    disks({ d1: 'local', d2: 'local', d3: 'local', d4: 'local' }),
  );
  agent.isGatingAll = true;
  const jobs = new JobManager(agent, { progressIntervalMs: 10, limits: { host: 2, datastore: 8 } });
  const seen: JobEvent[] = [];
  jobs.subscribe((event) => seen.push(event));
  const j1 = await jobs.startMigration({ disk: 'd1', datastore: 'fast' });
  const j2 = await jobs.startMigration({ disk: 'd2', datastore: 'fast' });
  const j3 = await jobs.startMigration({ disk: 'd3', datastore: 'fast' });
  const j4 = await jobs.startMigration({ disk: 'd4', datastore: 'fast' });
  assert.deepEqual([j1.state, j2.state], ['running', 'running']);
  assert.ok(j1.moveId !== null && j1.moveId !== j1.id);
  const hostFull = 'host limit: 2 of 2 migrations running on this host';
  assert.equal(j3.state, 'queued');
  assert.equal(j3.moveId, null);
  assert.deepEqual(j3.queue, { position: 1, waitingFor: hostFull });
  assert.deepEqual(j4.queue, { position: 2, waitingFor: hostFull });
  assert.deepEqual(j3.allowed, ['cancel', 'speed']);
  assert.deepEqual(jobs.limits(), {
    host: 2,
    datastore: 8,
    running: { host: 2, datastores: { local: 2, fast: 2 } },
    queued: 2,
  });
  assert.equal(agent.requests.length, 2, 'the agent saw only the jobs that started');

  // Speed while queued: taken when it starts. Cancel while queued: at once, nothing to undo.
  assert.equal(jobs.setSpeed(j3.id, 64 * MIB).speedBytesPerSecond, 64 * MIB);
  const cancelled = jobs.cancel(j4.id);
  assert.equal(cancelled.state, 'cancelled');
  assert.equal(cancelled.queue, null);
  assert.deepEqual(cancelled.allowed, []);
  assert.match(cancelled.events.at(-1)?.message ?? '', /cancelled while queued/);
  assert.equal(jobs.limits().queued, 1);

  // One running job ends: the next queued one starts, with its speed.
  const j3Running = nextEvent(jobs, j3.id, (e) => e.type === 'state' && e.job.state === 'running');
  openGateOf(agent, 'd1');
  assert.equal((await finished(jobs, j1.id)).state, 'succeeded');
  const started = await j3Running;
  assert.equal(started.job.queue, null);
  assert.ok(started.job.moveId !== null);
  assert.equal(agent.requests.find((r) => r.name === 'd3')?.speedBytesPerSecond, 64 * MIB);
  assert.equal(
    agent.requests.some((r) => r.name === 'd4'),
    false,
    'cancelled never started',
  );
  openGateOf(agent, 'd2');
  openGateOf(agent, 'd3');
  for (const job of [j2, j3]) assert.equal((await finished(jobs, job.id)).state, 'succeeded');
  for (const bench of agent.benches) {
    assertSameBytes(await bench.targetMemory.read(0, MIB), bench.model, bench.disk.name);
  }
  // Never more than two running at once, by the states the listeners saw.
  let runningNow = 0;
  let runningMax = 0;
  for (const event of seen.filter((e) => e.type === 'state')) {
    if (event.job.state === 'running') runningNow += 1;
    if (
      ['succeeded', 'failed', 'cancelled'].includes(event.job.state) &&
      event.job.moveId !== null
    ) {
      runningNow -= 1;
    }
    runningMax = Math.max(runningMax, runningNow);
  }
  assert.equal(runningMax, 2);
});

test('job queue: a job held by a datastore does not hold a later one that fits; places move up', async () => {
  const agent = new FakeAgent(
    ['a', 'b', 'c', 'd', 'e', 'f'],
    disks({ d1: 'a', d2: 'a', d3: 'b', d4: 'a' }),
  );
  agent.isGatingAll = true;
  const jobs = new JobManager(agent, { progressIntervalMs: 10, limits: { host: 4, datastore: 1 } });
  const j1 = await jobs.startMigration({ disk: 'd1', datastore: 'c' });
  const j2 = await jobs.startMigration({ disk: 'd2', datastore: 'd' });
  const j3 = await jobs.startMigration({ disk: 'd3', datastore: 'e' });
  const j4 = await jobs.startMigration({ disk: 'd4', datastore: 'f' });
  assert.equal(j1.state, 'running');
  assert.deepEqual(j2.queue, { position: 1, waitingFor: 'datastore a: 1 of 1 migrations' });
  assert.equal(j3.state, 'running', 'j3 fits and passes j2');
  assert.deepEqual(j4.queue, { position: 2, waitingFor: 'datastore a: 1 of 1 migrations' });

  const moved = nextEvent(jobs, j4.id, (e) => e.type === 'queue');
  jobs.cancel(j2.id);
  assert.deepEqual((await moved).job.queue, {
    position: 1,
    waitingFor: 'datastore a: 1 of 1 migrations',
  });
  assert.deepEqual(jobs.get(j4.id).queue?.position, 1);

  const j4Running = nextEvent(jobs, j4.id, (e) => e.type === 'state' && e.job.state === 'running');
  openGateOf(agent, 'd1');
  await j4Running;
  openGateOf(agent, 'd3');
  openGateOf(agent, 'd4');
  for (const job of [j1, j3, j4]) assert.equal((await finished(jobs, job.id)).state, 'succeeded');
});

test('job queue: a bad request is refused at once and leaves no job', async () => {
  const agent = new FakeAgent(['local', 'fast'], disks({ d1: 'local', d2: 'local' }));
  agent.isGatingAll = true;
  const jobs = new JobManager(agent, { progressIntervalMs: 10, limits: { host: 1, datastore: 8 } });
  const j1 = await jobs.startMigration({ disk: 'd2', datastore: 'fast' });
  await rejectsWith(jobs.startMigration({ disk: 'nope', datastore: 'fast' }), 'ERR_NOT_FOUND');
  await rejectsWith(jobs.startMigration({ disk: 'd1', datastore: 'nope' }), 'ERR_NOT_FOUND');
  await rejectsWith(jobs.startMigration({ disk: 'd1', datastore: 'local' }), 'ERR_SAME_DATASTORE');
  const queued = await jobs.startMigration({ disk: 'd1', datastore: 'fast' });
  assert.equal(queued.state, 'queued');
  // The same disk again while its job waits: refused now, not when its turn comes.
  await rejectsWith(jobs.startMigration({ disk: 'd1', datastore: 'fast' }), 'ERR_DISK_BUSY');
  assert.deepEqual(
    jobs.list().map((job) => job.id),
    [j1.id, queued.id],
  );
  openGateOf(agent, 'd2');
  const started = nextEvent(
    jobs,
    queued.id,
    (e) => e.type === 'state' && e.job.state === 'running',
  );
  await started;
  openGateOf(agent, 'd1');
  assert.equal((await finished(jobs, queued.id)).state, 'succeeded');
});

test('job queue: the disks of one VM arriving from another host hold one host slot, not one each', async () => {
  const agent = new FakeAgent(['local', 'fast'], disks({ d1: 'local', d2: 'local' }));
  agent.isGatingAll = true;
  const arriving = [
    { id: 'vm7-d0', move: 'vm7', datastore: 'local', committed: false },
    { id: 'vm7-d1', move: 'vm7', datastore: 'fast', committed: false },
    { id: 'done', move: 'done', datastore: 'fast', committed: true },
  ];
  Object.assign(agent, { receiver: { list: () => arriving } });
  const jobs = new JobManager(agent, { progressIntervalMs: 10, limits: { host: 2, datastore: 8 } });
  assert.deepEqual(jobs.limits().running, { host: 1, datastores: { local: 1, fast: 1 } });
  const j1 = await jobs.startMigration({ disk: 'd1', datastore: 'fast' });
  const j2 = await jobs.startMigration({ disk: 'd2', datastore: 'fast' });
  assert.equal(j1.state, 'running');
  assert.deepEqual(j2.queue, {
    position: 1,
    waitingFor: 'host limit: 2 of 2 migrations running on this host',
  });
  jobs.cancel(j2.id);
  jobs.cancel(j1.id);
  openGateOf(agent, 'd1');
  assert.equal((await finished(jobs, j1.id)).state, 'cancelled');
  await jobs.shutdown();
});
