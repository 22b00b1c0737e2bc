import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { JobManager } from '../../src/control/job-manager.js';
import type { JobEvent, JobRecord } from '../../src/control/job-record.js';
import { Agent, type VmInfo } from '../../src/host/agent.js';

const MIB = 1024 * 1024;
let agent: Agent;
let jobs: JobManager;
let app: FastifyInstance;
let baseUrl: string;
let dataDir: string;

before(async () => {
  // Not makeTempDir: its cleanup must run after the agent has closed, in the hook below.
  dataDir = await mkdtemp(join(tmpdir(), 'ferry-vms-api-test-'));
  agent = await Agent.open({ dataDir });
  await mkdir(join(dataDir, 'fast'));
  await agent.addDatastore('fast', join(dataDir, 'fast'));
  jobs = new JobManager(agent, { progressIntervalMs: 10 });
  app = createApi({ agent, nbdUrl: 'nbd://127.0.0.1:10809', jobs });
  await app.listen({ host: '127.0.0.1', port: 0 });
  baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(async () => {
  await jobs.shutdown();
  await app.close();
  await agent.close();
  await rm(dataDir, { recursive: true, force: true });
});

async function call(method: string, path: string, body?: unknown) {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) };
}

test('/v1/vms: create, list, show, errors, remove; POST /v1/migrations with vm moves it', async () => {
  for (const name of ['app-os', 'app-data']) {
    assert.equal((await call('POST', '/v1/disks', { name, size: '2M' })).status, 201);
  }
  const created = await call('POST', '/v1/vms', { name: 'app', disks: ['app-os', 'app-data'] });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  const vm = created.body as VmInfo;
  assert.equal(vm.datastore, 'local');
  assert.equal(vm.sizeBytes, 4 * MIB);
  assert.equal((await call('POST', '/v1/vms', { name: 'x', disks: [] })).status, 400);
  assert.equal((await call('POST', '/v1/vms', { name: 'x', disks: ['nope'] })).status, 404);
  assert.equal((await call('POST', '/v1/vms', { name: 'x', disks: ['app-os'] })).status, 409);
  const listed = await call('GET', '/v1/vms');
  assert.deepEqual(
    (listed.body as { vms: VmInfo[] }).vms.map((each) => each.name),
    ['app'],
  );
  assert.equal((await call('GET', '/v1/vms/nope')).status, 404);
  const both = await call('POST', '/v1/migrations', {
    vm: 'app',
    disk: 'app-os',
    datastore: 'fast',
  });
  assert.equal(both.status, 400);

  const finished = new Promise<JobEvent>((resolve) => {
    jobs.subscribe((event) => {
      if (event.job.finishedAt !== null) resolve(event);
    });
  });
  const started = await call('POST', '/v1/migrations', { vm: 'app', datastore: 'fast' });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const job = started.body as JobRecord;
  assert.equal(job.vm, 'app');
  assert.deepEqual(job.disks, ['app-os', 'app-data']);
  assert.equal(job.sizeBytes, 4 * MIB);
  const last = await finished;
  assert.equal(last.job.state, 'succeeded', JSON.stringify(last.job.error));
  assert.equal((await call('GET', '/v1/vms/app')).body.datastore, 'fast');
  for (const name of ['app-os', 'app-data']) {
    assert.equal((await call('GET', `/v1/disks/${name}`)).body.datastore, 'fast');
  }
  const record = (await call('GET', `/v1/jobs/${job.id}`)).body as JobRecord;
  assert.ok(record.events.some((event) => event.message.includes('moved VM app')));

  assert.equal((await call('DELETE', '/v1/vms/app')).status, 204);
  assert.equal((await call('GET', '/v1/vms/app')).status, 404);
  assert.deepEqual((await readdir(join(dataDir, 'fast'))).includes('app'), false);
  assert.equal((await call('GET', '/v1/disks/app-os')).status, 200);
});
