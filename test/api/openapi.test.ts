/** `GET /v1/openapi.json`: an OpenAPI 3 document built from the routes' own schemas. */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createApi } from '../../src/api/app.js';
import { startMigrationBodySchema } from '../../src/api/schemas.js';
import { JobManager } from '../../src/control/job-manager.js';
import { Agent } from '../../src/host/agent.js';

interface Operation {
  summary?: string;
  tags?: string[];
  requestBody?: { content: { 'application/json': { schema: Record<string, unknown> } } };
  parameters?: { name: string; in: string }[];
}
interface Document {
  openapi: string;
  info: { title: string; version: string };
  paths: Record<string, Record<string, Operation>>;
}

test('openapi: the document lists the routes with the schemas they validate', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-openapi-'));
  const agent = await Agent.open({ dataDir: dir });
  const app = createApi({
    agent,
    jobs: new JobManager(agent),
    nbdUrl: 'nbd://127.0.0.1:10809',
    version: '1.2.3',
  });
  try {
    const reply = await app.inject({ method: 'GET', url: '/v1/openapi.json' });
    assert.equal(reply.statusCode, 200);
    assert.match(String(reply.headers['content-type']), /^application\/json/);
    const doc = JSON.parse(reply.body) as Document;
    assert.match(doc.openapi, /^3\./);
    assert.equal(doc.info.version, '1.2.3');
    for (const path of [
      '/v1/health',
      '/v1/datastores',
      '/v1/disks',
      '/v1/disks/{name}',
      '/v1/migrations',
      '/v1/jobs',
      '/v1/jobs/{id}',
      '/v1/jobs/{id}/cancel',
      '/v1/jobs/{id}/speed',
    ]) {
      assert.ok(doc.paths[path], `${path} is missing from ${Object.keys(doc.paths).join(' ')}`);
    }
    const migrations = doc.paths['/v1/migrations']?.post;
    const body = migrations?.requestBody?.content['application/json'].schema;
    assert.deepEqual(
      Object.keys((body?.properties as object | undefined) ?? {}).sort(),
      Object.keys(startMigrationBodySchema.properties).sort(),
    );
    assert.equal(body?.additionalProperties, false);
    assert.deepEqual(migrations?.tags, ['migrations']);
    assert.deepEqual(doc.paths['/v1/jobs/{id}/cancel']?.post?.tags, ['jobs']);
    const disk = doc.paths['/v1/disks/{name}']?.get;
    assert.deepEqual(
      disk?.parameters?.map((parameter) => [parameter.name, parameter.in]),
      [['name', 'path']],
    );
    // Served, but not JSON: not in the document.
    assert.equal(doc.paths['/metrics'], undefined);
    assert.equal(doc.paths['/v1/openapi.json'], undefined);
  } finally {
    await app.close();
    await agent.close();
    await rm(dir, { recursive: true, force: true });
  }
});
