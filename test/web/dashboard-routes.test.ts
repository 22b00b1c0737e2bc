/**
 * The dashboard's static routes (src/web/dashboard-routes.ts) through the real API, in-process
 * with `inject`: the redirect to `/ui/` keeps the token, the files come with their types and a
 * strict Content Security Policy, and nothing outside the asset table is served.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { Agent } from '../../src/host/agent.js';
import { findAssetDirectory } from '../../src/web/index.js';
import { makeTempDir } from '../host/temp-dir.js';

let agent: Agent;
let app: FastifyInstance;

before(async () => {
  agent = await Agent.open({ dataDir: await makeTempDir() });
  app = createApi({ agent, nbdUrl: 'nbd://127.0.0.1:10809' });
});

after(async () => {
  await app.close();
  await agent.close();
});

test('GET / and /ui redirect to /ui/, keeping the query (the page reads ?token= from it)', async () => {
  for (const [url, location] of [
    ['/', '/ui/'],
    ['/ui', '/ui/'],
    ['/?token=abc', '/ui/?token=abc'],
    ['/ui?token=abc', '/ui/?token=abc'],
  ] as const) {
    const reply = await app.inject({ method: 'GET', url });
    assert.equal(reply.statusCode, 302, url);
    assert.equal(reply.headers.location, location, url);
  }
});

test('/ui/ is the page, and each asset comes with its type, the CSP and no-cache', async () => {
  const directory = findAssetDirectory();
  assert.ok(directory !== undefined, 'the assets are found from the compiled module');
  const page = await app.inject({ method: 'GET', url: '/ui/' });
  assert.equal(page.statusCode, 200);
  assert.match(String(page.headers['content-type']), /^text\/html/);
  assert.equal(page.body, await readFile(join(directory, 'index.html'), 'utf8'));
  const csp = String(page.headers['content-security-policy']);
  for (const rule of ["default-src 'none'", "script-src 'self'", "connect-src 'self'"]) {
    assert.ok(csp.includes(rule), `${rule} in ${csp}`);
  }
  assert.equal(page.headers['cache-control'], 'no-cache');
  for (const [file, type] of [
    ['app.js', /^text\/javascript/],
    ['chart.js', /^text\/javascript/],
    ['style.css', /^text\/css/],
  ] as const) {
    const reply = await app.inject({ method: 'GET', url: `/ui/${file}` });
    assert.equal(reply.statusCode, 200, file);
    assert.match(String(reply.headers['content-type']), type, file);
    assert.equal(reply.headers['x-content-type-options'], 'nosniff');
  }
});

test('a name outside the asset table is a 404 with a message, never a file from disk', async () => {
  for (const url of [
    '/ui/nothing.js',
    '/ui/..%2Fpackage.json',
    '/ui/%2E%2E%2F%2E%2E%2Fpackage.json',
    '/ui/../../package.json',
  ]) {
    const reply = await app.inject({ method: 'GET', url });
    assert.equal(reply.statusCode, 404, url);
    const error = reply.json<{ error: { code: string; message: string } }>().error;
    assert.equal(error.code, 'ERR_NO_ROUTE', url);
    assert.ok(error.message.length > 0);
  }
});
