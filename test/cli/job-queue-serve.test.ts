/**
 * The scheduler through the product: a real `ferry serve` with its default limits, 20 disk moves
 * submitted at once over the HTTP API, every disk's data read back over NBD, and the job history
 * still listed after a restart (ferry.db).
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { NbdClient } from '../../src/nbd/index.js';
import { makeTempDir } from '../host/temp-dir.js';
import { prng, randomBytes } from '../migrate/harness.js';
import { type ServeProcess, startServe } from './ferry-process.js';
import { api } from './live-serve.js';

const MIB = 1024 * 1024;
const DISK_COUNT = 20;

interface Job {
  readonly id: string;
  readonly disk: string;
  readonly from: string;
  readonly to: string;
  readonly state: string;
  readonly moveId: string | null;
  readonly queue: { position: number; waitingFor: string } | null;
  readonly speedBytesPerSecond: number;
  readonly createdAt: string;
  readonly finishedAt: string | null;
  readonly events: readonly { time: string; type: string; message: string }[];
}

function serveIn(dataDir: string): Promise<ServeProcess> {
  return startServe(['--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0']);
}

async function stop(serve: ServeProcess): Promise<void> {
  serve.child.kill('SIGTERM');
  assert.equal(await serve.exited, 0);
}

/** Reads the whole export of `disk` over NBD. */
async function readDisk(serve: ServeProcess, disk: string): Promise<Buffer> {
  const client = await NbdClient.connect({
    exportName: disk,
    host: '127.0.0.1',
    port: serve.ready.nbdPort,
  });
  try {
    return await client.read(0, MIB);
  } finally {
    await client.close();
  }
}

/** When a job held a slot: from its start (the `running` state event) to its end. */
function intervalOf(job: Job): { job: string; startMs: number; endMs: number } {
  const started = job.events.find(
    (e) => e.type === 'state' && e.message.startsWith('started move'),
  );
  assert.ok(started !== undefined && job.finishedAt !== null, `job ${job.id} ran and ended`);
  return { job: job.id, startMs: Date.parse(started.time), endMs: Date.parse(job.finishedAt) };
}

test('job queue (ferry serve): 20 moves submitted at once run at most 2 at a time, all finish, data intact, history survives a restart', async () => {
  const dataDir = await makeTempDir();
  const serve = await serveIn(dataDir);
  let isStopped = false;
  try {
    for (const name of ['a', 'b', 'c']) {
      const path = join(dataDir, name);
      await mkdir(path, { recursive: true });
      await api(serve, 'POST', '/v1/datastores', { name, path });
    }
    assert.deepEqual(
      (await api<{ host: number; datastore: number }>(serve, 'GET', '/v1/limits')).host,
      2,
    );
    const random = prng(10);
    const patterns = new Map<string, Buffer>();
    const targets = new Map<string, string>();
    for (let i = 0; i < DISK_COUNT; i += 1) {
      const disk = `q${i}`;
      const from = ['a', 'b', 'c'][i % 3]!;
      await api(serve, 'POST', '/v1/disks', { name: disk, size: MIB, datastore: from });
      const pattern = randomBytes(MIB, random);
      const client = await NbdClient.connect({
        exportName: disk,
        host: '127.0.0.1',
        port: serve.ready.nbdPort,
      });
      await client.write(0, pattern);
      await client.flush();
      await client.close();
      patterns.set(disk, pattern);
      targets.set(disk, ['b', 'c', 'a'][i % 3]!);
    }
    // Submitted back to back, faster than the moves end, so some wait for the host's two slots.
    // How many depends on the machine's speed: the test asks only that the queue was used, and
    // checks the limit itself from the records below.
    const submitted: Job[] = [];
    for (const [disk, to] of targets) {
      submitted.push(await api<Job>(serve, 'POST', '/v1/migrations', { disk, datastore: to }));
    }
    const queued = submitted.filter((job) => job.state === 'queued');
    assert.ok(queued.length >= 1, `some waited: ${queued.length} queued`);
    for (const job of queued) {
      assert.equal(job.moveId, null);
      assert.match(
        job.queue?.waitingFor ?? '',
        /^host limit: 2 of 2 migrations running on this host$/,
      );
    }
    let jobs: Job[] = [];
    for (;;) {
      ({ jobs } = await api<{ jobs: Job[] }>(serve, 'GET', '/v1/jobs'));
      if (jobs.every((job) => ['succeeded', 'failed', 'cancelled'].includes(job.state))) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(jobs.length, DISK_COUNT);
    const records = await Promise.all(
      jobs.map((job) => api<Job>(serve, 'GET', `/v1/jobs/${job.id}`)),
    );
    for (const job of records) assert.equal(job.state, 'succeeded', JSON.stringify(job.events));

    // At most two held a slot at any instant: a job that ends frees its slot before the next starts.
    const intervals = records.map(intervalOf);
    const edges = intervals.flatMap((each) => [
      { atMs: each.startMs, delta: 1 },
      { atMs: each.endMs, delta: -1 },
    ]);
    edges.sort((x, y) => x.atMs - y.atMs || x.delta - y.delta);
    let now = 0;
    let most = 0;
    for (const edge of edges) {
      now += edge.delta;
      most = Math.max(most, now);
    }
    assert.equal(most, 2, 'two ran at once, never more');
    // Queueing really happened: a job was submitted while two others held the host's slots.
    const waited = queued.map((job) => {
      const createdMs = Date.parse(job.createdAt);
      return intervals.filter(
        (each) => each.job !== job.id && each.startMs <= createdMs && each.endMs > createdMs,
      ).length;
    });
    assert.ok(waited.includes(2), `running when each queued job came: ${waited.join(', ')}`);

    for (const [disk, pattern] of patterns) {
      const info = await api<{ datastore: string }>(serve, 'GET', `/v1/disks/${disk}`);
      assert.equal(info.datastore, targets.get(disk));
      assert.ok(
        (await readDisk(serve, disk)).equals(pattern),
        `disk ${disk} holds what was written`,
      );
    }

    await stop(serve);
    isStopped = true;
    const again = await serveIn(dataDir);
    try {
      const { jobs: history } = await api<{ jobs: Job[] }>(again, 'GET', '/v1/jobs');
      assert.deepEqual(
        history.map((job) => [job.id, job.state]).sort(),
        records.map((job) => [job.id, 'succeeded']).sort(),
      );
      const one = await api<Job>(again, 'GET', `/v1/jobs/${records[0]!.id}`);
      assert.deepEqual(one.events, records[0]!.events);
    } finally {
      await stop(again);
    }
  } finally {
    if (!isStopped) await stop(serve);
  }
});
