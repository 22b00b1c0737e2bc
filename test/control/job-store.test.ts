import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { type Database, openDatabase } from '../../src/control/database.js';
import { JobManager } from '../../src/control/job-manager.js';
import { assertSameBytes } from '../migrate/harness.js';
import { FakeAgent, ResumingFakeAgent } from './fake-agent.js';
import { finished, nextEvent } from './job-waits.js';

const MIB = 1024 * 1024;

function threeDisks(): Record<string, { datastore: string; sizeBytes: number }> {
  return {
    d1: { datastore: 'local', sizeBytes: MIB },
    d2: { datastore: 'local', sizeBytes: MIB },
    d3: { datastore: 'local', sizeBytes: MIB },
  };
}

async function withDbFile(body: (path: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-jobs-'));
  try {
    await body(join(dir, 'ferry.db'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** A job manager over its own connection to the database file, as a new process would open it. */
function reopen(path: string, agent: FakeAgent): { db: Database; jobs: JobManager } {
  const db = openDatabase(path);
  return {
    db,
    jobs: new JobManager(agent, { db, progressIntervalMs: 10, limits: { host: 1, datastore: 8 } }),
  };
}

test('job store: a new job manager over the same ferry.db lists the history, events included', async () => {
  await withDbFile(async (path) => {
    const agent = new FakeAgent(['local', 'fast'], threeDisks());
    const first = reopen(path, agent);
    const done = await first.jobs.startMigration({ disk: 'd1', datastore: 'fast' });
    const record = await finished(first.jobs, done.id);
    assert.equal(record.state, 'succeeded');
    await first.jobs.shutdown();
    first.db.close();

    const second = reopen(path, agent);
    await second.jobs.recover();
    const listed = second.jobs.list();
    assert.deepEqual(
      listed.map((job) => [job.id, job.state, job.moveId, job.disk]),
      [[done.id, 'succeeded', record.moveId, 'd1']],
    );
    const again = second.jobs.get(done.id);
    assert.deepEqual(again.events, record.events);
    assert.equal(again.bytesCopied, MIB);
    assert.equal(again.finishedAt, record.finishedAt);
    await second.jobs.shutdown();
    second.db.close();
  });
});

test('job store: after a crash, the queued job runs and the one that ran without a journal fails', async () => {
  await withDbFile(async (path) => {
    const before = new FakeAgent(['local', 'fast'], threeDisks());
    before.isGatingAll = true;
    const first = reopen(path, before);
    const running = await first.jobs.startMigration({ disk: 'd1', datastore: 'fast' });
    const queued = await first.jobs.startMigration({ disk: 'd2', datastore: 'fast' });
    assert.deepEqual([running.state, queued.state], ['running', 'queued']);

    // The process "dies" here: a new one opens the same file while the old one is stuck.
    const after = new FakeAgent(['local', 'fast'], threeDisks());
    const second = reopen(path, after);
    assert.equal(second.jobs.get(running.id).state, 'running', 'as the database last saw it');
    assert.equal(second.jobs.get(queued.id).state, 'queued');
    // The old process goes away without writing anything more that matters.
    const stopping = first.jobs.shutdown();
    before.gates[0]!.open();
    await stopping;
    first.db.close();

    const queuedRuns = nextEvent(second.jobs, queued.id, (e) => e.job.state === 'running');
    await second.jobs.recover();
    const failed = second.jobs.get(running.id);
    assert.equal(failed.state, 'failed');
    assert.equal(failed.error?.code, 'ERR_JOB_INTERRUPTED');
    assert.equal(
      failed.error?.message,
      'the agent stopped during the move; the disk stayed on its source datastore local',
    );
    await queuedRuns;
    const ran = await finished(second.jobs, queued.id);
    assert.equal(ran.state, 'succeeded');
    assert.equal(after.requests[0]?.name, 'd2');
    const bench = after.benches[0]!;
    assertSameBytes(await bench.targetMemory.read(0, MIB), bench.model, 'd2 on its destination');
    await second.jobs.shutdown();
    second.db.close();

    // And the verdicts themselves were written.
    const third = reopen(path, after);
    assert.deepEqual(
      third.jobs.list().map((job) => [job.id, job.state]),
      [
        [running.id, 'failed'],
        [queued.id, 'succeeded'],
      ],
    );
    third.db.close();
  });
});

test('job store: interrupted moves the agent offers are resumed, as their job or as a new one', async () => {
  await withDbFile(async (path) => {
    const before = new FakeAgent(['local', 'fast'], threeDisks());
    before.isGatingAll = true;
    const first = reopen(path, before);
    const running = await first.jobs.startMigration({ disk: 'd1', datastore: 'fast' });
    assert.equal(running.moveId, 'move-1');

    const after = new ResumingFakeAgent(['local', 'fast'], threeDisks());
    const offer = {
      vm: null,
      from: 'local',
      to: 'fast',
      method: 'mirror',
      sizeBytes: MIB,
    } as const;
    after.offered.push(
      { ...offer, id: 'move-1', disk: 'd1', disks: ['d1'], copiedBytes: MIB / 2 },
      // A move the database never heard of (ferry.db was lost): a new job.
      { ...offer, id: 'move-77', disk: 'd3', disks: ['d3'], copiedBytes: 0 },
      // The same for a move to another host: its job says where.
      {
        ...offer,
        id: 'move-88',
        disk: 'd2',
        disks: ['d2'],
        to: 'default',
        toHost: 'b',
        copiedBytes: 0,
      },
      // One the agent cannot resume: rolled back, so the disk is not left busy.
      { ...offer, id: 'move-99', disk: 'gone', disks: ['gone'], copiedBytes: 0 },
    );
    const second = reopen(path, after);
    const stopping = first.jobs.shutdown();
    before.gates[0]!.open();
    await stopping;
    first.db.close();

    await second.jobs.recover();
    assert.deepEqual(after.resumed, ['move-1', 'move-77', 'move-88']);
    assert.deepEqual(after.abandoned, ['move-99']);
    const failed = second.jobs.list().find((job) => job.disk === 'gone');
    assert.equal(failed?.state, 'failed');
    const toHost = second.jobs.list().find((job) => job.moveId === 'move-88');
    assert.equal(toHost?.to, 'b:default');
    const same = second.jobs.get(running.id);
    assert.equal(same.moveId, 'move-1');
    assert.ok(
      same.events.some((e) =>
        /resumed move move-1 after the agent restarted: 512K of 1M/.test(e.message),
      ),
      JSON.stringify(same.events),
    );
    const found = second.jobs.list().find((job) => job.moveId === 'move-77');
    assert.ok(found !== undefined, 'the unknown move became a job');
    assert.notEqual(found.id, 'move-77');
    assert.equal(found.disk, 'd3');
    for (const id of [running.id, found.id, toHost?.id ?? '']) {
      assert.equal((await finished(second.jobs, id)).state, 'succeeded');
    }
    for (const bench of after.benches) {
      assertSameBytes(await bench.targetMemory.read(0, MIB), bench.model, bench.disk.name);
    }
    await second.jobs.shutdown();
    second.db.close();
  });
});
