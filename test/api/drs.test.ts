import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { openDatabase } from '../../src/control/database.js';
import { JobManager } from '../../src/control/job-manager.js';
import { Agent } from '../../src/host/agent.js';

/** The cluster, DRS and maintenance routes in-process: every bad input is a 4xx that says what to do. */
describe('cluster and DRS routes', () => {
  let agent: Agent;
  let app: FastifyInstance;
  let jobs: JobManager;
  // Not makeTempDir: its removal, registered from a before hook, may run before the tests.
  let dataDir: string;

  before(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ferry-drs-api-'));
    agent = await Agent.open({ dataDir });
    for (const name of ['a', 'b', 'c']) {
      await mkdir(join(dataDir, name));
      await agent.addDatastore(name, join(dataDir, name));
    }
    jobs = new JobManager(agent);
    app = createApi({ agent, db: openDatabase(':memory:'), jobs, nbdUrl: 'nbd://127.0.0.1:10809' });
    await app.ready();
  });

  after(async () => {
    await app.close();
    await jobs.shutdown();
    await agent.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  async function send(
    method: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE',
    url: string,
    payload?: object,
  ) {
    const reply = await app.inject({ method, url, ...(payload === undefined ? {} : { payload }) });
    return { status: reply.statusCode, body: reply.body === '' ? undefined : reply.json() };
  }

  it('creates, lists, changes and removes a cluster', async () => {
    const created = await send('POST', '/v1/clusters', { name: 'gold', datastores: ['a', 'b'] });
    assert.equal(created.status, 201);
    assert.deepEqual(
      { ...created.body, usedBytes: 0, capacityBytes: 0 },
      {
        name: 'gold',
        datastores: ['a', 'b'],
        spaceThreshold: 0.8,
        latencyThresholdMs: 15,
        automation: 'manual',
        intervalSeconds: 300,
        keepVmDisksTogether: true,
        usedBytes: 0,
        capacityBytes: 0,
        latencyMs: null,
      },
    );
    const changed = await send('PATCH', '/v1/clusters/gold', {
      spaceThreshold: 0.7,
      datastores: ['a', 'b', 'c'],
    });
    assert.equal(changed.status, 200);
    assert.equal(changed.body.spaceThreshold, 0.7);
    const list = await send('GET', '/v1/clusters');
    assert.deepEqual(
      list.body.clusters.map((c: { name: string }) => c.name),
      ['gold'],
    );
    const stores = await send('GET', '/v1/datastores');
    for (const entry of stores.body.datastores as {
      name: string;
      cluster: unknown;
      maintenance: unknown;
    }[]) {
      assert.equal(entry.maintenance, 'off');
      assert.equal(entry.cluster, entry.name === 'local' ? null : 'gold');
    }
    assert.equal((await send('GET', '/v1/datastores/a')).body.cluster, 'gold');
    const none = await send('POST', '/v1/drs/apply');
    assert.deepEqual(none, { status: 200, body: { jobs: [] } });
    assert.equal((await send('DELETE', '/v1/clusters/gold')).status, 204);
    assert.equal((await send('GET', '/v1/clusters/gold')).status, 404);
  });

  it('answers bad input with a 4xx that says what to do', async () => {
    const cases: [string, string, object | undefined, number, RegExp][] = [
      ['POST', '/v1/clusters', { name: 'x', datastores: ['nope'] }, 404, /ferry datastore add/],
      ['POST', '/v1/clusters', { name: '-x', datastores: ['a'] }, 400, /bad cluster name/],
      ['POST', '/v1/clusters', { name: 'x', datastores: [] }, 400, /datastores/],
      [
        'POST',
        '/v1/clusters',
        { name: 'x', datastores: ['a'], spaceThreshold: 2 },
        400,
        /spaceThreshold/,
      ],
      [
        'POST',
        '/v1/clusters',
        { name: 'x', datastores: ['a'], automation: 'sometimes' },
        400,
        /automation/,
      ],
      ['PATCH', '/v1/clusters/nope', { spaceThreshold: 0.5 }, 404, /ferry cluster list/],
      ['GET', '/v1/drs/recommendations?cluster=nope', undefined, 404, /ferry cluster list/],
      ['POST', '/v1/drs/apply', { ids: ['nope'] }, 400, /ferry drs recommend/],
      ['PUT', '/v1/datastores/a/capacity', { capacity: 'lots' }, 400, /size/i],
      ['DELETE', '/v1/datastores/a/maintenance', undefined, 400, /not in maintenance/],
      ['POST', '/v1/datastores/nope/maintenance', undefined, 404, /ferry datastore list/],
    ];
    for (const [method, url, payload, status, message] of cases) {
      const reply = await send(method as 'POST', url, payload);
      assert.equal(reply.status, status, `${method} ${url}: ${JSON.stringify(reply.body)}`);
      assert.match(reply.body.error.message, message, `${method} ${url}`);
    }
    assert.equal(
      (await send('POST', '/v1/clusters', { name: 'one', datastores: ['a'] })).status,
      201,
    );
    const taken = await send('POST', '/v1/clusters', { name: 'two', datastores: ['b', 'a'] });
    assert.equal(taken.status, 409);
    assert.match(taken.body.error.message, /already in cluster one/);
    // A datastore outside any cluster with a disk on it has nowhere to go.
    await agent.createDisk({ name: 'lonely', sizeBytes: 1024 * 1024, datastore: 'c' });
    const nowhere = await send('POST', '/v1/datastores/c/maintenance');
    assert.equal(nowhere.status, 400);
    assert.match(nowhere.body.error.message, /in no cluster.*ferry cluster create/);
    // An empty one enters and is on at once.
    const empty = await send('POST', '/v1/datastores/b/maintenance');
    assert.equal(empty.status, 202);
    assert.equal(empty.body.maintenance, 'on');
    const refused = await send('POST', '/v1/disks', { name: 'x', size: '1M', datastore: 'b' });
    assert.equal(refused.status, 409);
    assert.match(refused.body.error.message, /in maintenance \(on\).*--exit/);
    assert.equal((await send('DELETE', '/v1/datastores/b/maintenance')).status, 200);
    assert.equal((await send('DELETE', '/v1/clusters/one')).status, 204);
  });
});
