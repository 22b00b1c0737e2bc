import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BlockErrorCode } from '../../src/block/errors.js';
import { JobManager } from '../../src/control/job-manager.js';
import type { JobEvent } from '../../src/control/job-record.js';
import { errorCodeOf, errorMessageOf } from '../../src/util/errors.js';
import { assertSameBytes, checkOnSource } from '../migrate/harness.js';
import { FakeAgent } from './fake-agent.js';
import { finished, nextEvent, timerCount } from './job-waits.js';

const MIB = 1024 * 1024;

function setup(options: ConstructorParameters<typeof JobManager>[1] = {}): {
  agent: FakeAgent;
  jobs: JobManager;
} {
  const agent = new FakeAgent(['local', 'fast'], {
    vm1: { datastore: 'local', sizeBytes: MIB },
    vm2: { datastore: 'local', sizeBytes: MIB },
  });
  return { agent, jobs: new JobManager(agent, { progressIntervalMs: 10, ...options }) };
}

async function rejectsWith(promise: Promise<unknown> | (() => unknown), code: string) {
  await assert.rejects(
    async () => (typeof promise === 'function' ? promise() : promise),
    (error: unknown) => {
      assert.equal(errorCodeOf(error), code, errorMessageOf(error));
      return true;
    },
  );
}

test('job manager: a move runs to success, with its events, counters and history', async () => {
  const { agent, jobs } = setup();
  const seen: JobEvent[] = [];
  jobs.subscribe((event) => seen.push(event));
  const timersBefore = timerCount();
  const started = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
  assert.equal(started.kind, 'migrate');
  assert.match(started.id, /^[0-9a-f]{8}$/);
  assert.equal(started.moveId, 'move-1');
  assert.equal(started.state, 'running', 'started at once: nothing else runs');
  assert.equal(started.queue, null);
  assert.equal(jobs.get('move-1').id, started.id, 'a move id finds its job');
  assert.deepEqual(
    [started.disk, started.from, started.to, started.sizeBytes],
    ['vm1', 'local', 'fast', MIB],
  );
  assert.equal(started.requestedMethod, 'mirror');
  assert.equal(started.finishedAt, null);
  const done = await finished(jobs, started.id);
  assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
  assert.equal(done.error, null);
  assert.equal(done.method, 'mirror');
  assert.equal(done.bytesCopied, MIB);
  assert.equal(done.progress.doneBytes, done.progress.totalBytes);
  assert.equal(done.dirtyBytes, 0);
  assert.equal(done.phase, 'switchover');
  assert.equal(done.mode, 'sync');
  assert.ok(done.passes >= 1);
  assert.ok(done.downtimeMs !== null && done.downtimeMs >= 0);
  assert.ok(done.finishedAt !== null && done.finishedAt >= done.startedAt);
  assert.deepEqual(done.allowed, []);
  const bench = agent.benches[0]!;
  assertSameBytes(await bench.targetMemory.read(0, MIB), bench.model, 'destination');
  // The history: created first, then what the migration said before and after moveDisk resolved.
  const types: string[] = done.events.map((entry) => entry.type);
  assert.equal(types[0], 'created');
  for (const type of ['mode', 'phase', 'switchover', 'state']) assert.ok(types.includes(type));
  assert.match(done.events.at(-1)?.message ?? '', /moved disk vm1 to datastore fast/);
  const states = seen.filter((e) => e.type === 'state').map((e) => e.job.state);
  assert.deepEqual(states, ['running', 'switching', 'succeeded']);
  assert.equal(timerCount(), timersBefore, 'the progress ticker is gone');
});

test('job manager: a running job reports progress on its ticker until it ends', async () => {
  const { agent, jobs } = setup();
  agent.next = { isGated: true };
  const timersBefore = timerCount();
  const job = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
  assert.equal(timerCount(), timersBefore + 1, 'one ticker per running job');
  for (let i = 0; i < 3; i += 1) {
    const tick = await nextEvent(jobs, job.id, (event) => event.type === 'progress');
    assert.equal(tick.message, null);
    assert.equal(tick.job.state, 'running');
    assert.equal(tick.job.progress.totalBytes, MIB);
  }
  assert.equal(jobs.get(job.id).events.filter((e) => e.type === 'progress').length, 0);
  agent.gates[0]!.open();
  assert.equal((await finished(jobs, job.id)).state, 'succeeded');
  assert.equal(timerCount(), timersBefore, 'the ticker is cleared at the end');
});

test('job manager: cancel rolls back; the source keeps everything; verbs then refused', async () => {
  const { agent, jobs } = setup();
  agent.next = { isGated: true };
  const job = await jobs.startMigration({ disk: 'vm1', datastore: 'fast', method: 'mirror' });
  await agent.gates[0]!.reached;
  const cancelling = jobs.cancel(job.id);
  assert.equal(cancelling.state, 'cancelling');
  assert.deepEqual(cancelling.allowed, []);
  await rejectsWith(() => jobs.cancel(job.id), 'ERR_JOB_STATE');
  await rejectsWith(() => jobs.setSpeed(job.id, MIB), 'ERR_JOB_STATE');
  agent.gates[0]!.open();
  const done = await finished(jobs, job.id);
  assert.equal(done.state, 'cancelled');
  assert.equal(done.error?.code, 'ERR_CANCELLED');
  assert.match(done.events.at(-1)?.message ?? '', /disk vm1 stays on datastore local/);
  assert.ok(done.events.some((e) => e.type === 'rollback'));
  await checkOnSource(agent.benches[0]!);
  assert.equal((await agent.getDisk('vm1')).datastore, 'local');
  await rejectsWith(() => jobs.cancel(job.id), 'ERR_JOB_STATE');
});

test('job manager: speed changes reach the migration and the record', async () => {
  const { agent, jobs } = setup();
  agent.next = { isGated: true };
  const job = await jobs.startMigration({
    disk: 'vm1',
    datastore: 'fast',
    speedBytesPerSecond: 8 * MIB,
  });
  assert.equal(agent.requests[0]?.speedBytesPerSecond, 8 * MIB);
  assert.equal(job.speedBytesPerSecond, 8 * MIB);
  const slowed = jobs.setSpeed(job.id, 0);
  assert.equal(slowed.speedBytesPerSecond, 0);
  assert.equal(slowed.events.at(-1)?.message, 'speed set to unlimited');
  assert.deepEqual(agent.migrations[0]?.speeds, [0]);
  agent.gates[0]!.open();
  assert.equal((await finished(jobs, job.id)).state, 'succeeded');
  await rejectsWith(() => jobs.setSpeed(job.id, MIB), 'ERR_JOB_STATE');
});

test('job manager: a failing destination fails the job; the guest stays on the source', async () => {
  const { agent, jobs } = setup();
  agent.next = { fault: { code: BlockErrorCode.EIO, afterBytes: 256 * 1024 } };
  const job = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
  const done = await finished(jobs, job.id);
  assert.equal(done.state, 'failed');
  assert.equal(done.error?.code, 'ERR_TARGET_FAILED');
  assert.match(done.events.at(-1)?.message ?? '', /ERR_TARGET_FAILED.*stays on datastore local/);
  await checkOnSource(agent.benches[0]!);
});

test('job manager: refusals leave no job; unknown ids are ERR_JOB_NOT_FOUND', async () => {
  const { agent, jobs } = setup();
  await rejectsWith(jobs.startMigration({ disk: 'nope', datastore: 'fast' }), 'ERR_NOT_FOUND');
  await rejectsWith(jobs.startMigration({ disk: 'vm1', datastore: 'nope' }), 'ERR_NOT_FOUND');
  await rejectsWith(jobs.startMigration({ disk: 'vm1', datastore: 'local' }), 'ERR_SAME_DATASTORE');
  assert.deepEqual(jobs.list(), []);
  agent.next = { isGated: true };
  const job = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
  await rejectsWith(jobs.startMigration({ disk: 'vm1', datastore: 'fast' }), 'ERR_DISK_BUSY');
  assert.deepEqual(
    jobs.list().map((j) => j.id),
    [job.id],
  );
  await rejectsWith(() => jobs.get('move-99'), 'ERR_JOB_NOT_FOUND');
  await rejectsWith(() => jobs.cancel('move-99'), 'ERR_JOB_NOT_FOUND');
  agent.gates[0]!.open();
  await finished(jobs, job.id);
});

test('job manager: keeps the newest finished jobs only, and at most 50 events each', async () => {
  const { agent, jobs } = setup({ finishedMax: 2 });
  const ids: string[] = [];
  for (const to of ['fast', 'local', 'fast']) {
    const job = await jobs.startMigration({ disk: 'vm1', datastore: to });
    ids.push(job.id);
    assert.equal((await finished(jobs, job.id)).state, 'succeeded');
  }
  assert.deepEqual(
    jobs.list().map((j) => j.id),
    ids.slice(1),
  );
  await rejectsWith(() => jobs.get(ids[0]!), 'ERR_JOB_NOT_FOUND');

  agent.next = { isGated: true };
  const busy = await jobs.startMigration({ disk: 'vm2', datastore: 'fast' });
  for (let i = 1; i <= 60; i += 1) jobs.setSpeed(busy.id, i * MIB);
  const events = jobs.get(busy.id).events;
  assert.equal(events.length, 50);
  assert.equal(events.at(-1)?.message, 'speed set to 60M/s');
  agent.gates.at(-1)!.open();
  await finished(jobs, busy.id);
});

test('job manager: a listener that throws is removed; the job and other listeners go on', async () => {
  const logged: string[] = [];
  const { jobs } = setup({
    log: {
      debug: () => {},
      info: () => {},
      warn: () => {},
      error: (_fields, message) => logged.push(message ?? ''),
    },
  });
  let calls = 0;
  jobs.subscribe(() => {
    calls += 1;
    throw new Error('listener bug');
  });
  const seen: string[] = [];
  jobs.subscribe((event) => seen.push(event.type));
  const job = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
  assert.equal((await finished(jobs, job.id)).state, 'succeeded');
  assert.equal(calls, 1);
  assert.deepEqual(logged, ['a job listener failed and was removed']);
  assert.ok(seen.includes('switchover') && seen.at(-1) === 'state');
});

test('job manager: shutdown cancels running jobs, waits for their rollback, refuses new ones', async () => {
  const { agent, jobs } = setup();
  agent.next = { isGated: true };
  const job = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
  await agent.gates[0]!.reached;
  let isShutDown = false;
  const shutdown = jobs.shutdown().then(() => {
    isShutDown = true;
  });
  assert.equal(jobs.get(job.id).state, 'cancelling');
  await nextEvent(jobs, job.id, (e) => e.type === 'progress');
  assert.equal(isShutDown, false, 'shutdown waits while the rollback waits');
  agent.gates[0]!.open();
  await shutdown;
  assert.equal(jobs.get(job.id).state, 'cancelled');
  await checkOnSource(agent.benches[0]!);
  await rejectsWith(jobs.startMigration({ disk: 'vm2', datastore: 'fast' }), 'ERR_AGENT_CLOSED');
});
