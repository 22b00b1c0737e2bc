import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { type AddressInfo, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { registerPeerAuth, signRequest } from '../../src/api/auth.js';
import { Agent } from '../../src/host/agent.js';
import { PeerClient, PeerError } from '../../src/host/peer-client.js';
import { type Peer, PeerRegistry } from '../../src/host/peers.js';
import { formatPskLine, type PskKey } from '../../src/nbd/psk-file.js';

/**
 * Two agents in this process, each with its own data dir, peer registry and API on port 0, the
 * way two hosts each run `ferry serve`. The tests run in order: the first pairs the hosts.
 */
interface Node {
  readonly name: string;
  readonly dataDir: string;
  readonly agent: Agent;
  readonly peers: PeerRegistry;
  readonly app: FastifyInstance;
  readonly url: string;
}

const SHARED: PskKey = { identity: 'ferry', key: randomBytes(32) };
const VERSION: string = JSON.parse(
  await readFile(new URL('../../../package.json', import.meta.url), 'utf8'),
).version;
const nodes: Node[] = [];
let a: Node;
let b: Node;

async function startNode(name: string): Promise<Node> {
  const dataDir = await mkdtemp(join(tmpdir(), `ferry-hosts-${name}-`));
  const agent = await Agent.open({ dataDir });
  const peers = await PeerRegistry.load(agent.dataDir);
  const app = createApi({ agent, peers, hostName: name, nbdUrl: 'nbd://127.0.0.1:10809' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const node = {
    name,
    dataDir,
    agent,
    peers,
    app,
    url: `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`,
  };
  nodes.push(node);
  return node;
}

before(async () => {
  a = await startNode('a');
  b = await startNode('b');
});

after(async () => {
  for (const node of nodes) {
    await node.app.close();
    await node.agent.close();
    await rm(node.dataDir, { recursive: true, force: true });
  }
});

interface Reply {
  status: number;
  body: Record<string, unknown>;
}

async function call(node: Node, method: string, path: string, body?: unknown): Promise<Reply> {
  const response = await fetch(`${node.url}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: text === '' ? {} : JSON.parse(text) };
}

function errorOf(reply: Reply): { code: string; message: string } {
  return reply.body.error as { code: string; message: string };
}

test('hosts: two agents add each other; each lists the other reachable with its version and datastores', async () => {
  // a first: b does not know the identity yet, which is accepted and reported.
  const first = await call(a, 'POST', '/v1/hosts', {
    name: 'b',
    url: b.url,
    key: formatPskLine(SHARED),
  });
  assert.equal(first.status, 201, JSON.stringify(first.body));
  assert.equal(first.body.reachable, true);
  assert.match(String(first.body.error), /no key for the identity ferry: add this host there/);

  const second = await call(b, 'POST', '/v1/hosts', {
    name: 'a',
    url: `${a.url}/`,
    key: formatPskLine(SHARED),
  });
  assert.equal(second.status, 201, JSON.stringify(second.body));
  assert.deepEqual(second.body, {
    name: 'a',
    url: a.url,
    identity: 'ferry',
    reachable: true,
    version: VERSION,
    host: 'a',
    datastores: second.body.datastores,
    error: null,
  });

  const listed = await call(a, 'GET', '/v1/hosts');
  assert.equal(listed.status, 200);
  const hosts = listed.body.hosts as Record<string, unknown>[];
  assert.equal(hosts.length, 1);
  const [seen] = hosts;
  assert.equal(seen?.name, 'b');
  assert.equal(seen?.reachable, true);
  assert.equal(seen?.version, VERSION);
  assert.equal(seen?.host, 'b');
  assert.equal(seen?.error, null);
  const stores = seen?.datastores as { name: string; freeBytes: number; capacityBytes: number }[];
  assert.deepEqual(
    stores.map((d) => d.name),
    ['local'],
  );
  assert.ok((stores[0]?.capacityBytes ?? 0) > 0 && (stores[0]?.freeBytes ?? 0) > 0);

  const health = await call(b, 'GET', '/v1/health');
  assert.equal(health.body.host, 'b');
  assert.equal(health.body.version, VERSION);
});

test('hosts: show, refusals, and remove', async () => {
  const shown = await call(a, 'GET', '/v1/hosts/b');
  assert.equal(shown.status, 200);
  assert.equal(shown.body.host, 'b');
  assert.equal((await call(a, 'GET', '/v1/hosts/nope')).status, 404);

  const taken = await call(a, 'POST', '/v1/hosts', {
    name: 'b',
    url: b.url,
    key: formatPskLine(SHARED),
  });
  assert.equal(taken.status, 409);
  assert.equal(errorOf(taken).code, 'ERR_EXISTS');
  const badUrl = await call(a, 'POST', '/v1/hosts', {
    name: 'c',
    url: 'hostc',
    key: formatPskLine(SHARED),
  });
  assert.equal(badUrl.status, 400);
  assert.equal(errorOf(badUrl).code, 'ERR_BAD_URL');
  const badKey = await call(a, 'POST', '/v1/hosts', { name: 'c', url: b.url, key: 'ferry:xyz' });
  assert.equal(badKey.status, 400);
  assert.equal(errorOf(badKey).code, 'ERR_BAD_KEY');

  // An unreachable host is accepted, and reported as such.
  const port = await closedPort();
  const dead = await call(a, 'POST', '/v1/hosts', {
    name: 'dead',
    url: `http://127.0.0.1:${port}`,
    key: formatPskLine(SHARED),
  });
  assert.equal(dead.status, 201);
  assert.equal(dead.body.reachable, false);
  assert.match(String(dead.body.error), /host dead at http:\/\/127\.0\.0\.1:\d+ is unreachable/);
  const both = (await call(a, 'GET', '/v1/hosts')).body.hosts as { name: string }[];
  assert.deepEqual(
    both.map((h) => h.name),
    ['b', 'dead'],
  );
  assert.equal((await call(a, 'DELETE', '/v1/hosts/dead')).status, 204);
  assert.equal((await call(a, 'DELETE', '/v1/hosts/dead')).status, 404);
  assert.equal(a.peers.get('dead'), undefined);
});

test('hosts: adding a host whose key for our identity differs is refused, and nothing is kept', async () => {
  const c = await startNode('c');
  const other: PskKey = { identity: 'ferry', key: randomBytes(32) };
  const refused = await call(c, 'POST', '/v1/hosts', {
    name: 'b',
    url: b.url,
    key: formatPskLine(other),
  });
  assert.equal(refused.status, 409, JSON.stringify(refused.body));
  assert.equal(errorOf(refused).code, 'ERR_PEER_UNAUTHORIZED');
  assert.match(errorOf(refused).message, /the key files differ/);
  assert.deepEqual(c.peers.list(), []);
});

test('auth: loopback callers need no credential; other addresses do', async () => {
  for (const remoteAddress of ['127.0.0.1', '127.9.9.9', '::1', '::ffff:127.0.0.1']) {
    const reply = await b.app.inject({ method: 'GET', url: '/v1/health', remoteAddress });
    assert.equal(reply.statusCode, 200, remoteAddress);
  }
  for (const remoteAddress of ['10.1.2.3', '::ffff:10.1.2.3', '2001:db8::1', '128.0.0.1']) {
    const reply = await b.app.inject({ method: 'GET', url: '/v1/health', remoteAddress });
    assert.equal(reply.statusCode, 401, remoteAddress);
    const error = reply.json<{ error: { code: string; message: string } }>().error;
    assert.equal(error.code, 'ERR_UNAUTHORIZED');
    assert.match(error.message, /need a credential.*ferry host add/);
    assert.equal(reply.headers['www-authenticate'], 'Ferry-PSK error="missing"');
  }
  // A refused request changes nothing: the check runs before the body is even read.
  const posted = await b.app.inject({
    method: 'POST',
    url: '/v1/disks',
    remoteAddress: '10.1.2.3',
    payload: { name: 'sneaky', size: '1M' },
  });
  assert.equal(posted.statusCode, 401);
  assert.equal(b.agent.exports.has('sneaky'), false);
});

test('auth: a signed request from another address passes; a bad one is refused from any address', async () => {
  const remote = '10.1.2.3';
  const signed = (key: PskKey, path: string, nowMs = Date.now(), method = 'GET') =>
    b.app.inject({
      method,
      url: path,
      remoteAddress: remote,
      headers: { authorization: signRequest(key, method, path, nowMs) },
    });
  assert.equal((await signed(SHARED, '/v1/health')).statusCode, 200);
  assert.equal((await signed(SHARED, '/v1/datastores?x=1')).statusCode, 200);
  // Margins of tens of seconds around the 300 s window: a loaded machine may take a while
  // between signing and checking, and that must not turn a case into the other.
  assert.equal((await signed(SHARED, '/v1/health', Date.now() - 250_000)).statusCode, 200);

  const cases: [string, Promise<{ statusCode: number; headers: Record<string, unknown> }>][] = [
    ['bad-signature', signed({ identity: 'ferry', key: randomBytes(32) }, '/v1/health')],
    ['clock-skew', signed(SHARED, '/v1/health', Date.now() - 310_000)],
    ['clock-skew', signed(SHARED, '/v1/health', Date.now() + 360_000)],
    ['unknown-identity', signed({ identity: 'stranger', key: SHARED.key }, '/v1/health')],
  ];
  for (const [failure, pending] of cases) {
    const reply = await pending;
    assert.equal(reply.statusCode, 401, failure);
    assert.equal(reply.headers['www-authenticate'], `Ferry-PSK error="${failure}"`);
  }
  // A credential is bound to its path and method: replaying it elsewhere fails.
  const header = signRequest(SHARED, 'GET', '/v1/health', Date.now());
  for (const [method, url] of [
    ['GET', '/v1/datastores'],
    ['DELETE', '/v1/health'],
    ['GET', '/v1/health?x=1'],
  ] as const) {
    const reply = await b.app.inject({
      method,
      url,
      remoteAddress: remote,
      headers: { authorization: header },
    });
    assert.equal(reply.statusCode, 401, `${method} ${url}`);
  }
  // From loopback, a credential that is presented must still be valid.
  // One hex digit of the signature changed, always to another digit (a '0' becomes '1').
  const tampered = header.replace(
    /sig="(.)/,
    (_, digit: string) => `sig="${digit === '0' ? '1' : '0'}`,
  );
  for (const authorization of [tampered, 'Basic dXNlcjpwYXNz']) {
    const reply = await b.app.inject({
      method: 'GET',
      url: '/v1/health',
      headers: { authorization },
    });
    assert.equal(reply.statusCode, 401, authorization);
  }
});

test('auth: the request records which identity authenticated it', async () => {
  const app = Fastify();
  const keys = new Map([[SHARED.identity, SHARED.key]]);
  registerPeerAuth(app, { keyFor: (identity) => keys.get(identity) });
  app.get('/who', async (request) => ({ identity: request.peerIdentity }));
  try {
    const local = await app.inject({ method: 'GET', url: '/who' });
    assert.deepEqual(local.json(), { identity: null });
    const remote = await app.inject({
      method: 'GET',
      url: '/who',
      remoteAddress: '192.0.2.7',
      headers: { authorization: signRequest(SHARED, 'GET', '/who', Date.now()) },
    });
    assert.deepEqual(remote.json(), { identity: 'ferry' });
  } finally {
    await app.close();
  }
});

test('peer client: replies, peer errors with their code, refused keys, unreachable and silent peers', async () => {
  const peerB: Peer = { name: 'b', url: b.url, key: SHARED };
  const client = new PeerClient(peerB);
  const created = await client.post<{ name: string }>('/v1/disks', { name: 'remote1', size: '1M' });
  assert.equal(created.name, 'remote1');
  assert.equal((await client.get<{ name: string }>('/v1/disks/remote1')).name, 'remote1');
  await client.delete('/v1/disks/remote1');
  assert.equal(b.agent.exports.has('remote1'), false);

  await assert.rejects(client.get('/v1/disks/nope'), (error: unknown) => {
    assert.ok(error instanceof PeerError);
    assert.equal(error.code, 'ERR_PEER_REFUSED');
    assert.equal(error.remoteCode, 'ERR_NOT_FOUND');
    assert.equal(error.remoteStatus, 404);
    assert.match(error.message, /^host b: no disk named nope/);
    return true;
  });

  const wrongKey = new PeerClient({ ...peerB, key: { identity: 'ferry', key: randomBytes(32) } });
  await assert.rejects(wrongKey.get('/v1/health'), (error: unknown) => {
    assert.ok(error instanceof PeerError);
    assert.equal(error.code, 'ERR_PEER_UNAUTHORIZED');
    assert.equal(error.authFailure, 'bad-signature');
    assert.match(error.message, /the key files differ/);
    return true;
  });
  const skewed = new PeerClient(peerB, { nowMs: () => Date.now() - 3_600_000 });
  await assert.rejects(skewed.get('/v1/health'), { authFailure: 'clock-skew' });

  const port = await closedPort();
  const gone = new PeerClient({ ...peerB, url: `http://127.0.0.1:${port}` });
  await assert.rejects(gone.get('/v1/health'), (error: unknown) => {
    assert.ok(error instanceof PeerError);
    assert.equal(error.code, 'ERR_PEER_UNREACHABLE');
    assert.equal(error.remoteCode, null);
    assert.ok(error.message.includes(`host b at http://127.0.0.1:${port} is unreachable`));
    assert.match(error.message, /ferry host list/);
    return true;
  });

  const silent = await silentServer();
  try {
    const mute = new PeerClient({ ...peerB, url: `http://127.0.0.1:${silent.port}` });
    const startedMs = Date.now();
    await assert.rejects(mute.get('/v1/health', { timeoutMs: 200 }), {
      code: 'ERR_PEER_UNREACHABLE',
      message: /no answer within 0\.2 s/,
    });
    assert.ok(Date.now() - startedMs < 5_000);
    const controller = new AbortController();
    const pending = mute.get('/v1/health', { signal: controller.signal });
    controller.abort(new Error('stopped by caller'));
    await assert.rejects(pending, /stopped by caller/);
  } finally {
    silent.close();
  }
});

/** A TCP port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A server that accepts connections and never answers: a hung peer. */
async function silentServer(): Promise<{ port: number; close: () => void }> {
  const sockets = new Set<import('node:net').Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}
