/**
 * API tokens (issue 10): callers from other addresses than loopback need one, as a Bearer
 * header or, on GET only, `?token=`; tokens are made, listed and removed from loopback only, and
 * stored hashed. Requests from elsewhere are Fastify `inject`s with a `remoteAddress`; the CLI
 * side (`ferry token ...`, FERRY_TOKEN) runs against the same API listening on loopback.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance, InjectOptions } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { runCli } from '../../src/cli/run.js';
import { type Database, openDatabase } from '../../src/control/database.js';
import { Agent } from '../../src/host/agent.js';

const ELSEWHERE = '192.0.2.7';
let agent: Agent;
let db: Database;
let app: FastifyInstance;
let apiUrl: string;
let dir: string;

before(async () => {
  // Not makeTempDir: its removal would run before the tests; this one waits for the agent.
  dir = await mkdtemp(join(tmpdir(), 'ferry-tokens-'));
  agent = await Agent.open({ dataDir: join(dir, 'data') });
  db = openDatabase(join(dir, 'data', 'ferry.db'));
  app = createApi({ agent, db, nbdUrl: 'nbd://127.0.0.1:10809' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  apiUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(async () => {
  await app.close();
  await agent.close();
  db.close();
  await rm(dir, { recursive: true, force: true });
});

async function ferry(argv: readonly string[], env: Record<string, string> = {}) {
  let stdout = '';
  let stderr = '';
  const code = await runCli({
    argv,
    version: '0.0.0-test',
    env: { FERRY_API: apiUrl, ...env },
    cwd: '/',
    stdout: (text) => {
      stdout += text;
    },
    stderr: (text) => {
      stderr += text;
    },
    serve: async () => assert.fail('serve is not run here'),
  });
  return { code, stdout, stderr };
}

function fromElsewhere(options: InjectOptions) {
  return app.inject({ remoteAddress: ELSEWHERE, ...options });
}

function errorOf(body: string): { code: string; message: string } {
  return (JSON.parse(body) as { error: { code: string; message: string } }).error;
}

test('tokens: none from elsewhere is 401 saying how to get one; a created token opens the API', async () => {
  const refused = await fromElsewhere({ method: 'GET', url: '/v1/disks' });
  assert.equal(refused.statusCode, 401);
  assert.equal(errorOf(refused.body).code, 'ERR_UNAUTHORIZED');
  assert.match(errorOf(refused.body).message, /ferry token create NAME/);
  assert.match(errorOf(refused.body).message, /Authorization: Bearer <token>/);
  assert.equal(refused.headers['www-authenticate'], 'Ferry-PSK error="missing"');
  // Loopback needs nothing.
  assert.equal((await app.inject({ method: 'GET', url: '/v1/disks' })).statusCode, 200);

  const created = await ferry(['token', 'create', 'laptop']);
  assert.equal(created.code, 0, created.stderr);
  const token = created.stdout.trim();
  assert.match(token, /^ferry_[A-Za-z0-9_-]{43}$/);
  assert.match(created.stderr, /shown only now/);
  // Only a hash is stored.
  const rows = db.prepare('SELECT * FROM tokens').all() as Record<string, unknown>[];
  assert.equal(rows.length, 1);
  assert.ok(!JSON.stringify(rows).includes(token.slice(6)));

  const bearer = { authorization: `Bearer ${token}` };
  const listed = await fromElsewhere({ method: 'GET', url: '/v1/disks', headers: bearer });
  assert.equal(listed.statusCode, 200, listed.body);
  const made = await fromElsewhere({
    method: 'POST',
    url: '/v1/disks',
    headers: bearer,
    payload: { name: 'd1', size: '1M' },
  });
  assert.equal(made.statusCode, 201, made.body);

  const wrong = await fromElsewhere({
    method: 'GET',
    url: '/v1/disks',
    headers: { authorization: `Bearer ${token}x` },
  });
  assert.equal(wrong.statusCode, 401);
  assert.match(errorOf(wrong.body).message, /knows no such API token/);

  const list = await ferry(['token', 'list']);
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, /^NAME +CREATED +LAST USED\nlaptop +\S+ +\d{4}-\d\d-\d\dT/);
  assert.ok(!list.stdout.includes(token));
});

test('tokens: ?token= works for GET only; management only from loopback; rm revokes', async () => {
  const created = await ferry(['token', 'create', 'browser', '--json']);
  assert.equal(created.code, 0, created.stderr);
  const { token } = JSON.parse(created.stdout) as { token: string };

  const viaQuery = await fromElsewhere({ method: 'GET', url: `/v1/datastores?token=${token}` });
  assert.equal(viaQuery.statusCode, 200, viaQuery.body);
  const postViaQuery = await fromElsewhere({
    method: 'POST',
    url: `/v1/disks?token=${token}`,
    payload: { name: 'd2', size: '1M' },
  });
  assert.equal(postViaQuery.statusCode, 401);
  assert.match(errorOf(postViaQuery.body).message, /GET requests only.*Authorization: Bearer/);
  assert.equal(
    (await agent.listDisks()).some((disk) => disk.name === 'd2'),
    false,
  );

  const bearer = { authorization: `Bearer ${token}` };
  const mint = await fromElsewhere({
    method: 'POST',
    url: '/v1/tokens',
    headers: bearer,
    payload: { name: 'more' },
  });
  assert.equal(mint.statusCode, 403);
  assert.match(errorOf(mint.body).message, /only from the Ferry host itself/);

  // The dashboard's files need nothing, a token given with them included (the page's address
  // carries it); an unknown file is a 404, not a 401.
  assert.equal((await fromElsewhere({ method: 'GET', url: '/ui/app.js' })).statusCode, 200);
  assert.equal((await fromElsewhere({ method: 'GET', url: '/ui/?token=wrong' })).statusCode, 200);
  assert.equal((await fromElsewhere({ method: 'GET', url: '/ui/nothing.js' })).statusCode, 404);

  const removed = await ferry(['token', 'rm', 'browser']);
  assert.equal(removed.code, 0, removed.stderr);
  const after = await fromElsewhere({ method: 'GET', url: `/v1/datastores?token=${token}` });
  assert.equal(after.statusCode, 401);
  const again = await ferry(['token', 'rm', 'browser']);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /no token named browser/);
  const taken = await ferry(['token', 'create', 'laptop']);
  assert.equal(taken.code, 1);
  assert.match(taken.stderr, /a token named laptop exists/);
});

test('tokens: the CLI sends FERRY_TOKEN, and a wrong one is reported even on loopback', async () => {
  const bad = await ferry(['disk', 'list'], { FERRY_TOKEN: 'ferry_nope' });
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /knows no such API token/);
  const created = await ferry(['token', 'create', 'script']);
  const good = await ferry(['disk', 'list'], { FERRY_TOKEN: created.stdout.trim() });
  assert.equal(good.code, 0, good.stderr);
  assert.match(good.stdout, /d1/);
});
