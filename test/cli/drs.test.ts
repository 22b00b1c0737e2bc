/**
 * Clusters, Storage DRS and maintenance mode through the product: `ferry serve` as a child
 * process, the real `ferry` command against it, guests over real NBD (our client, and fio with
 * verify). Each test ends by reading every disk back and comparing it with what was written.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { NbdClient } from '../../src/nbd/index.js';
import { makeTempDir } from '../host/temp-dir.js';
import { assertSameBytes } from '../migrate/harness.js';
import { MiB, runOk, toolTest } from '../nbd/interop-helpers.js';
import { runFerry, type ServeProcess, startServe } from './ferry-process.js';
import { fioArgs } from './fio-guest.js';

interface Job {
  readonly id: string;
  readonly state: string;
  readonly disk: string;
  readonly to: string;
  readonly error: { code: string; message: string } | null;
}

interface Recommendation {
  readonly id: string;
  readonly disk: string;
  readonly from: string;
  readonly to: string;
  readonly reason: string;
  readonly effect: { to: { usedFractionAfter: number } };
}

interface DiskView {
  readonly name: string;
  readonly datastore: string;
  readonly sizeBytes: number;
  readonly image: string;
}

interface DatastoreView {
  readonly name: string;
  readonly maintenance: string;
  readonly cluster: string | null;
}

async function call(
  serve: ServeProcess,
  method: string,
  path: string,
  body?: object,
): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${serve.ready.apiUrl}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) };
}

async function api<T>(serve: ServeProcess, method: string, path: string, body?: object) {
  const reply = await call(serve, method, path, body);
  assert.ok(reply.status < 300, `${method} ${path}: ${reply.status} ${JSON.stringify(reply.body)}`);
  return reply.body as T;
}

async function ferry(serve: ServeProcess, args: readonly string[]) {
  return runFerry(args, { FERRY_API: serve.ready.apiUrl });
}

async function ferryJson<T>(serve: ServeProcess, args: readonly string[]): Promise<T> {
  const run = await ferry(serve, [...args, '--json']);
  assert.equal(run.code, 0, `ferry ${args.join(' ')}: ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}

/** Polls until the job is over; the job API's own tests cover its event stream. */
async function waitJob(serve: ServeProcess, id: string): Promise<Job> {
  for (;;) {
    const job = await api<Job>(serve, 'GET', `/v1/jobs/${id}`);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) return job;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function serveWith(datastores: readonly string[]): Promise<{
  serve: ServeProcess;
  dataDir: string;
}> {
  const dataDir = await makeTempDir();
  const serve = await startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  for (const name of datastores) {
    const path = join(dataDir, name);
    await mkdir(path, { recursive: true });
    await api(serve, 'POST', '/v1/datastores', { name, path });
  }
  return { serve, dataDir };
}

async function stop(serve: ServeProcess): Promise<void> {
  serve.child.kill('SIGTERM');
  await serve.exited;
}

async function imagesIn(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((file) => file.endsWith('.raw'));
}

test('drs: a cluster filled past its space threshold gets moves that, applied, bring it under; data intact', async () => {
  const { serve, dataDir } = await serveWith(['a', 'b', 'c']);
  try {
    for (const name of ['a', 'b', 'c']) {
      const run = await ferry(serve, ['cluster', 'capacity', name, '100M']);
      assert.equal(run.code, 0, run.stderr);
    }
    const cluster = await ferryJson<{ spaceThreshold: number; datastores: string[] }>(serve, [
      'cluster',
      'create',
      'gold',
      // Both spellings: the repeated option and the list.
      '--datastore',
      'a',
      '--datastores',
      'b,c',
      // This test is about space: filling the disks below is guest I/O whose latency (30 MiB
      // writes) would otherwise also, rightly, ask for a latency move.
      '--latency-threshold',
      '600000',
    ]);
    assert.equal(cluster.spaceThreshold, 0.8);
    assert.deepEqual(cluster.datastores, ['a', 'b', 'c']);

    // 90 MiB of 100 on a: above 80%.
    const written = new Map<string, Buffer>();
    for (const name of ['d1', 'd2', 'd3']) {
      await api(serve, 'POST', '/v1/disks', { name, size: 30 * MiB, datastore: 'a' });
      const client = await NbdClient.connect({
        exportName: name,
        host: '127.0.0.1',
        port: serve.ready.nbdPort,
      });
      const data = randomBytes(30 * MiB);
      await client.write(0, data);
      await client.flush();
      await client.close();
      written.set(name, data);
    }

    const { recommendations } = await ferryJson<{ recommendations: Recommendation[] }>(serve, [
      'drs',
      'recommend',
      'gold',
    ]);
    assert.ok(recommendations.length >= 1, 'a is over its threshold');
    for (const one of recommendations) {
      assert.equal(one.reason, 'space');
      assert.equal(one.from, 'a');
      assert.notEqual(one.to, 'a');
      assert.ok(one.effect.to.usedFractionAfter <= 0.8);
    }
    const human = await ferry(serve, ['drs', 'recommend', 'gold']);
    assert.match(human.stdout, /space\s+disk d\d/);
    assert.match(human.stdout, /a is 90\.0% used, above 80\.0%/);

    const { jobs } = await ferryJson<{ jobs: Job[] }>(serve, ['drs', 'apply', 'gold']);
    assert.equal(jobs.length, recommendations.length);
    for (const job of jobs) {
      const done = await waitJob(serve, job.id);
      assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
    }

    const after = await ferryJson<{ recommendations: Recommendation[] }>(serve, [
      'drs',
      'recommend',
    ]);
    assert.deepEqual(after.recommendations, []);
    const { disks } = await api<{ disks: DiskView[] }>(serve, 'GET', '/v1/disks');
    for (const name of ['a', 'b', 'c']) {
      const used = disks
        .filter((disk) => disk.datastore === name)
        .reduce((sum, disk) => sum + disk.sizeBytes, 0);
      assert.ok(used <= 80 * MiB, `${name} holds ${used / MiB} MiB`);
      // The images really are where the agent says.
      assert.deepEqual(
        (await imagesIn(join(dataDir, name))).sort(),
        disks
          .filter((disk) => disk.datastore === name)
          .map((disk) => `${disk.name}.raw`)
          .sort(),
      );
    }
    const moved = disks.filter((disk) => disk.datastore !== 'a');
    assert.equal(moved.length, jobs.length);
    for (const [name, data] of written) {
      const client = await NbdClient.connect({
        exportName: name,
        host: '127.0.0.1',
        port: serve.ready.nbdPort,
      });
      assertSameBytes(await client.read(0, data.length), data, `disk ${name}`);
      await client.close();
    }

    // Initial placement: a new disk "on" the cluster goes to the member with the most room.
    const emptiest = ['b', 'c'].find((name) => !disks.some((disk) => disk.datastore === name));
    const placed = await ferryJson<DiskView>(serve, [
      'disk',
      'create',
      'e1',
      '--size',
      '10M',
      '--datastore',
      'gold',
    ]);
    assert.equal(placed.datastore, emptiest ?? placed.datastore);
    assert.notEqual(placed.datastore, 'a');
    // 100 MiB fits under no member's 80 MiB.
    const tooBig = await ferry(serve, [
      'disk',
      'create',
      'e2',
      '--size',
      '100M',
      '--datastore',
      'gold',
    ]);
    assert.equal(tooBig.code, 1);
    assert.match(tooBig.stderr, /no member of cluster gold can take .* add a datastore/);

    // Bad input says what to do.
    const taken = await ferry(serve, ['cluster', 'create', 'other', '--datastores', 'b']);
    assert.equal(taken.code, 1);
    assert.match(taken.stderr, /already in cluster gold/);
    const none = await ferry(serve, ['cluster', 'create', 'other']);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /--datastore A --datastore B/);
    const badThreshold = await ferry(serve, [
      'cluster',
      'set',
      'gold',
      '--space-threshold',
      '150%',
    ]);
    assert.equal(badThreshold.code, 2);
    assert.match(badThreshold.stderr, /percentage such as 80%/);
    const unknown = await call(serve, 'POST', '/v1/clusters', { name: 'x', datastores: ['nope'] });
    assert.equal(unknown.status, 404);
    assert.match(JSON.stringify(unknown.body), /ferry datastore add/);
    const noCluster = await call(serve, 'GET', '/v1/drs/recommendations?cluster=nope');
    assert.equal(noCluster.status, 404);
  } finally {
    await stop(serve).catch(() => serve.child.kill('SIGKILL'));
  }
});

const FIO_SIZE = 48 * MiB;

toolTest(
  'maintenance: a datastore empties while fio writes and verifies, ends on, and refuses new disks',
  ['fio'],
  async () => {
    const { serve, dataDir } = await serveWith(['a', 'b']);
    try {
      const created = await ferry(serve, ['cluster', 'create', 'pair', '--datastores', 'a,b']);
      assert.equal(created.code, 0, created.stderr);
      await api(serve, 'POST', '/v1/disks', { name: 'vm1', size: FIO_SIZE, datastore: 'a' });
      const uri = `nbd://127.0.0.1:${serve.ready.nbdPort}/vm1`;
      // About 4 s of random writes, each block once; the move starts while they run.
      const fio = runOk('fio', fioArgs(uri, FIO_SIZE, ['--rate_iops=3000', '--do_verify=1']), {
        timeoutMs: 90_000,
        cwd: dataDir,
      });
      await new Promise((resolve) => setTimeout(resolve, 700));
      const entered = await ferryJson<{ maintenance: string; jobs: Job[] }>(serve, [
        'datastore',
        'maintenance',
        'a',
      ]);
      assert.equal(entered.maintenance, 'entering');
      assert.deepEqual(
        entered.jobs.map((job) => [job.disk, job.to]),
        [['vm1', 'b']],
      );
      // While entering: no new disks, no moves in.
      const refused = await ferry(serve, [
        'disk',
        'create',
        'x',
        '--size',
        '1M',
        '--datastore',
        'a',
      ]);
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        /datastore a is in maintenance .*ferry datastore maintenance a --exit/,
      );

      const job = await waitJob(serve, entered.jobs[0]!.id);
      assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
      await fio;
      // It turns "on" at the service's next check once empty.
      let state = '';
      for (let tries = 0; tries < 600 && state !== 'on'; tries += 1) {
        const { datastores } = await api<{ datastores: DatastoreView[] }>(
          serve,
          'GET',
          '/v1/datastores',
        );
        const a = datastores.find((one) => one.name === 'a');
        assert.equal(a?.cluster, 'pair');
        state = a?.maintenance ?? '';
        if (state !== 'on') await new Promise((resolve) => setTimeout(resolve, 100));
      }
      assert.equal(state, 'on');
      assert.deepEqual(await imagesIn(join(dataDir, 'a')), []);
      const disk = await api<DiskView>(serve, 'GET', '/v1/disks/vm1');
      assert.equal(disk.datastore, 'b');
      // Every write fio had acknowledged is there, through the export.
      await runOk('fio', fioArgs(uri, FIO_SIZE, ['--verify_only']), {
        timeoutMs: 60_000,
        cwd: dataDir,
      });

      const stillRefused = await ferry(serve, [
        'disk',
        'create',
        'x',
        '--size',
        '1M',
        '--datastore',
        'a',
      ]);
      assert.equal(stillRefused.code, 1);
      assert.match(stillRefused.stderr, /in maintenance \(on\)/);
      const moveIn = await call(serve, 'POST', '/v1/migrations', { disk: 'vm1', datastore: 'a' });
      assert.equal(moveIn.status, 409);
      assert.match(JSON.stringify(moveIn.body), /in maintenance/);

      const exited = await ferry(serve, ['datastore', 'maintenance', 'a', '--exit']);
      assert.equal(exited.code, 0, exited.stderr);
      const again = await ferryJson<DiskView>(serve, [
        'disk',
        'create',
        'x',
        '--size',
        '1M',
        '--datastore',
        'a',
      ]);
      assert.equal(again.datastore, 'a');
      const twice = await ferry(serve, ['datastore', 'maintenance', 'a', '--exit']);
      assert.equal(twice.code, 1);
      assert.match(twice.stderr, /not in maintenance/);
    } finally {
      await stop(serve).catch(() => serve.child.kill('SIGKILL'));
    }
  },
);

test('drs: a member whose guest latency is above its threshold gets its busiest disk moved off; data intact', async () => {
  const { serve } = await serveWith(['a', 'b']);
  try {
    const created = await ferry(serve, ['cluster', 'create', 'gold', '--datastores', 'a,b']);
    assert.equal(created.code, 0, created.stderr);
    const written = new Map<string, Buffer>();
    for (const name of ['busy', 'quiet']) {
      await api(serve, 'POST', '/v1/disks', { name, size: 8 * MiB, datastore: 'a' });
      written.set(name, Buffer.alloc(8 * MiB));
    }
    // A first sample of the disks' counters, so that the window holds the writes below.
    await ferryJson(serve, ['cluster', 'show', 'gold']);
    const guest = await NbdClient.connect({
      exportName: 'busy',
      host: '127.0.0.1',
      port: serve.ready.nbdPort,
    });
    for (let at = 0; at < 8 * MiB; at += MiB) {
      const data = randomBytes(MiB);
      await guest.write(at, data, { fua: true });
      data.copy(written.get('busy') ?? Buffer.alloc(0), at);
    }
    await guest.close();
    const quiet = await NbdClient.connect({
      exportName: 'quiet',
      host: '127.0.0.1',
      port: serve.ready.nbdPort,
    });
    const once = randomBytes(4096);
    await quiet.write(0, once, { fua: true });
    once.copy(written.get('quiet') ?? Buffer.alloc(0), 0);
    await quiet.close();

    // Whatever this machine's latency is, a threshold under it: the rule must fire.
    const measured = await ferryJson<{ latencyMs: number | null }>(serve, [
      'cluster',
      'show',
      'gold',
    ]);
    assert.ok(measured.latencyMs !== null && measured.latencyMs > 0, 'a has guest latency');
    const threshold = (measured.latencyMs / 2).toFixed(4);
    const set = await ferry(serve, ['cluster', 'set', 'gold', '--latency-threshold', threshold]);
    assert.equal(set.code, 0, set.stderr);

    const { recommendations } = await ferryJson<{ recommendations: Recommendation[] }>(serve, [
      'drs',
      'recommend',
      'gold',
    ]);
    assert.equal(recommendations.length, 1, JSON.stringify(recommendations));
    const [one] = recommendations;
    assert.deepEqual([one?.reason, one?.disk, one?.from, one?.to], ['latency', 'busy', 'a', 'b']);
    const human = await ferry(serve, ['drs', 'recommend', 'gold']);
    assert.match(human.stdout, /guest latency on a is [\d.]+ ms, above/);

    const { jobs } = await ferryJson<{ jobs: Job[] }>(serve, ['drs', 'apply', 'gold']);
    assert.equal(jobs.length, 1);
    const done = await waitJob(serve, jobs[0]?.id ?? '');
    assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
    const { disks } = await api<{ disks: DiskView[] }>(serve, 'GET', '/v1/disks');
    assert.deepEqual(disks.map((disk) => [disk.name, disk.datastore]).sort(), [
      ['busy', 'b'],
      ['quiet', 'a'],
    ]);
    for (const [name, data] of written) {
      const reader = await NbdClient.connect({
        exportName: name,
        host: '127.0.0.1',
        port: serve.ready.nbdPort,
      });
      assertSameBytes(await reader.read(0, 8 * MiB), data, name);
      await reader.close();
    }
  } finally {
    await stop(serve).catch(() => serve.child.kill('SIGKILL'));
  }
});
