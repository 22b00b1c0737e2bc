import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { Agent } from '../../src/host/agent.js';
import { readPackageVersion } from '../../src/util/package-version.js';
import { makeTempDir } from '../host/temp-dir.js';

const MIB = 1024 * 1024;
let agent: Agent;
let app: FastifyInstance;
let baseUrl: string;

let dataDir: string;

before(async () => {
  // Not makeTempDir: its cleanup must run after the agent has closed, in the hook below.
  dataDir = await mkdtemp(join(tmpdir(), 'ferry-api-test-'));
  agent = await Agent.open({ dataDir });
  app = createApi({ agent, nbdUrl: 'nbd://127.0.0.1:10809', nbdSocketPath: '/run/ferry.sock' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(async () => {
  await app.close();
  await agent.close();
  await rm(dataDir, { recursive: true, force: true });
});

interface Reply {
  status: number;
  body: unknown;
}

async function call(method: string, path: string, body?: unknown): Promise<Reply> {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : {
          headers: { 'content-type': 'application/json' },
          body: typeof body === 'string' ? body : JSON.stringify(body),
        }),
  });
  const text = await response.text();
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text) };
}

function assertError(reply: Reply, status: number, code: string): void {
  assert.equal(reply.status, status, JSON.stringify(reply.body));
  const error = (reply.body as { error: { code: string; message: string } }).error;
  assert.equal(error.code, code);
  assert.ok(error.message.length > 0);
}

test('GET /v1/health', async () => {
  const reply = await call('GET', '/v1/health');
  assert.equal(reply.status, 200);
  assert.deepEqual(reply.body, {
    status: 'ok',
    host: hostname(),
    version: readPackageVersion(),
    dataDir: agent.dataDir,
    nbdUrl: 'nbd://127.0.0.1:10809',
    nbdSocket: '/run/ferry.sock',
    disks: 0,
    warnings: [],
  });
});

test('POST /v1/disks creates, with size as text or bytes', async () => {
  const created = await call('POST', '/v1/disks', { name: 'api1', size: '4M' });
  assert.equal(created.status, 201);
  const disk = created.body as Record<string, unknown>;
  assert.equal(disk.name, 'api1');
  assert.equal(disk.sizeBytes, 4 * MIB);
  assert.equal(disk.provisioning, 'thin');
  assert.equal(disk.datastore, 'local');
  assert.equal(disk.uri, 'nbd://127.0.0.1:10809/api1');
  assert.equal(disk.socketUri, 'nbd+unix:///api1?socket=/run/ferry.sock');

  const thick = await call('POST', '/v1/disks', {
    name: 'api2',
    size: MIB,
    provisioning: 'thick',
    datastore: 'local',
  });
  assert.equal(thick.status, 201);
  assert.ok((thick.body as { allocatedBytes: number }).allocatedBytes >= MIB);
});

test('POST /v1/disks refuses bad input with 400 and a taken name with 409', async () => {
  await call('POST', '/v1/disks', { name: 'taken', size: '1M' });
  assertError(await call('POST', '/v1/disks', { name: 'taken', size: '1M' }), 409, 'ERR_EXISTS');
  assertError(await call('POST', '/v1/disks', { name: '.x', size: '1M' }), 400, 'ERR_BAD_NAME');
  assertError(await call('POST', '/v1/disks', { name: 'x', size: 'ten' }), 400, 'ERR_BAD_SIZE');
  assertError(await call('POST', '/v1/disks', { name: 'x', size: 1000 }), 400, 'ERR_BAD_SIZE');
  assertError(await call('POST', '/v1/disks', { name: 'x' }), 400, 'ERR_BAD_REQUEST');
  assertError(
    await call('POST', '/v1/disks', { name: 'x', size: '1M', provisoning: 'thick' }),
    400,
    'ERR_BAD_REQUEST',
  );
  assertError(
    await call('POST', '/v1/disks', { name: 'x', size: '1M', provisioning: 'lazy' }),
    400,
    'ERR_BAD_REQUEST',
  );
  assertError(await call('POST', '/v1/disks', '{"name":'), 400, 'ERR_BAD_REQUEST');
  assertError(
    await call('POST', '/v1/disks', { name: 'x', size: '1M', datastore: 'nope' }),
    404,
    'ERR_NOT_FOUND',
  );
});

test('GET /v1/disks and /v1/disks/:name', async () => {
  await call('POST', '/v1/disks', { name: 'listed', size: '1M' });
  const list = await call('GET', '/v1/disks');
  assert.equal(list.status, 200);
  const disks = (list.body as { disks: { name: string }[] }).disks;
  assert.ok(disks.some((d) => d.name === 'listed'));
  const one = await call('GET', '/v1/disks/listed');
  assert.equal(one.status, 200);
  assert.equal((one.body as { uri: string }).uri, 'nbd://127.0.0.1:10809/listed');
  assertError(await call('GET', '/v1/disks/absent'), 404, 'ERR_NOT_FOUND');
});

test('GET /v1/disks/:name/stats counts guest I/O', async () => {
  await call('POST', '/v1/disks', { name: 'counted', size: '1M' });
  await agent.exports.lookup('counted')?.device.write(0, Buffer.alloc(4096, 1));
  const reply = await call('GET', '/v1/disks/counted/stats');
  assert.equal(reply.status, 200);
  const stats = (
    reply.body as { stats: { verbs: { write: { operations: number; bytes: number } } } }
  ).stats;
  assert.equal(stats.verbs.write.operations, 1);
  assert.equal(stats.verbs.write.bytes, 4096);
  assertError(await call('GET', '/v1/disks/absent/stats'), 404, 'ERR_NOT_FOUND');
});

test('DELETE /v1/disks/:name', async () => {
  await call('POST', '/v1/disks', { name: 'doomed', size: '1M' });
  const reply = await call('DELETE', '/v1/disks/doomed');
  assert.equal(reply.status, 204);
  assertError(await call('GET', '/v1/disks/doomed'), 404, 'ERR_NOT_FOUND');
  assertError(await call('DELETE', '/v1/disks/doomed'), 404, 'ERR_NOT_FOUND');
});

test('POST /v1/disks/import', async () => {
  const file = join(await makeTempDir(), 'in.img');
  await writeFile(file, Buffer.alloc(MIB, 9));
  const reply = await call('POST', '/v1/disks/import', { name: 'imported', file });
  assert.equal(reply.status, 201);
  assert.equal((reply.body as { sizeBytes: number }).sizeBytes, MIB);
  assert.equal((reply.body as { provisioning: string }).provisioning, 'thick');
  assertError(
    await call('POST', '/v1/disks/import', { name: 'rel', file: 'in.img' }),
    400,
    'ERR_BAD_PATH',
  );
  assertError(await call('POST', '/v1/disks/import', { name: 'nofile' }), 400, 'ERR_BAD_REQUEST');
});

test('datastores: add, list, show, remove with their errors', async () => {
  const dir = await makeTempDir();
  const added = await call('POST', '/v1/datastores', { name: 'extra', path: dir });
  assert.equal(added.status, 201, JSON.stringify(added.body));
  assert.equal((added.body as { diskCount: number }).diskCount, 0);
  assertError(
    await call('POST', '/v1/datastores', { name: 'extra', path: dir }),
    409,
    'ERR_EXISTS',
  );
  assertError(
    await call('POST', '/v1/datastores', { name: 'x', path: 'rel' }),
    400,
    'ERR_BAD_PATH',
  );
  assertError(await call('POST', '/v1/datastores', { name: '-x', path: dir }), 400, 'ERR_BAD_NAME');

  const list = await call('GET', '/v1/datastores');
  assert.equal(list.status, 200);
  const datastores = (list.body as { datastores: { name: string; capacityBytes: number }[] })
    .datastores;
  assert.deepEqual(
    datastores.map((d) => d.name),
    ['local', 'extra'],
  );
  assert.ok((datastores[0]?.capacityBytes ?? 0) > 0);
  assert.equal((await call('GET', '/v1/datastores/extra')).status, 200);
  assertError(await call('GET', '/v1/datastores/nope'), 404, 'ERR_NOT_FOUND');

  await call('POST', '/v1/disks', { name: 'pinned', size: '1M', datastore: 'extra' });
  assertError(await call('DELETE', '/v1/datastores/extra'), 409, 'ERR_DATASTORE_NOT_EMPTY');
  await call('DELETE', '/v1/disks/pinned');
  assert.equal((await call('DELETE', '/v1/datastores/extra')).status, 204);
  assertError(await call('DELETE', '/v1/datastores/extra'), 404, 'ERR_NOT_FOUND');
});

test('unknown routes get the error body with 404', async () => {
  assertError(await call('GET', '/v1/nothing'), 404, 'ERR_NO_ROUTE');
});
