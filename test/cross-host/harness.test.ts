import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startDelayRelay } from './delay-relay.js';
import {
  cleanupStaleNamespaces,
  createHostPair,
  type Host,
  type HostPair,
  listNamespacesSync,
} from './netns.js';
import { netnsTest } from './netns-test.js';
import { startServeIn } from './serve-in.js';
import { TCP_PROBE } from './tcp-probe.js';

/** The harness of the cross-host tests (issue 7) tested on its own: hosts, link, relay, cleanup. */

const RELAY_SCRIPT = fileURLToPath(new URL('./delay-relay.js', import.meta.url));
const MiB = 1024 * 1024;

async function withPair(body: (pair: HostPair) => Promise<void>): Promise<void> {
  const pair = await createHostPair();
  try {
    await body(pair);
  } finally {
    await pair.dispose();
  }
}

/** Spawns a script in `host` and resolves with it and the JSON of its first stdout line. */
async function spawnListening(
  host: Host,
  args: readonly string[],
): Promise<{ child: ChildProcess; port: number }> {
  const child = host.spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    child.once('exit', (code) => reject(new Error(`${args.join(' ')} exited with ${code}`)));
  });
  const record = JSON.parse(first) as { port: number };
  return { child, port: record.port };
}

/** Runs a tcp-probe mode in `host` and parses its JSON answer. */
async function probe(host: Host, args: readonly string[]): Promise<Record<string, unknown>> {
  const result = await host.exec(process.execPath, [TCP_PROBE, ...args]);
  assert.equal(result.code, 0, `tcp-probe ${args.join(' ')} in ${host.ns}: ${result.stderr}`);
  return JSON.parse(result.stdout) as Record<string, unknown>;
}

netnsTest('two hosts reach each other over the veth and nothing else', {}, async () => {
  await withPair(async ({ a, b }) => {
    for (const [from, to] of [
      [a, b],
      [b, a],
    ] as const) {
      const echo = await spawnListening(to, [TCP_PROBE, 'echo', '--listen', `${to.ip}:0`]);
      assert.deepEqual(await probe(from, ['connect', '--target', `${to.ip}:${echo.port}`]), {
        ok: true,
      });
      echo.child.kill();
    }
    // A server on the root namespace's loopback is out of reach: each host has its own lo.
    const rootServer = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => rootServer.listen(0, '127.0.0.1', resolve));
    const rootPort = (rootServer.address() as AddressInfo).port;
    try {
      const answer = await probe(a, ['connect', '--target', `127.0.0.1:${rootPort}`]);
      assert.deepEqual(answer, { ok: false, code: 'ECONNREFUSED' });
    } finally {
      rootServer.close();
    }
    // Only lo and the veth, and only the pair's /30 to route to: no way out of the pair.
    for (const host of [a, b]) {
      const links = await host.exec('ip', ['-o', 'link', 'show']);
      const names = links.stdout.split('\n').filter((line) => line !== '');
      assert.deepEqual(
        names.map((line) => line.split(': ')[1]?.split('@')[0]),
        ['lo', host.device],
      );
      const routes = await host.exec('ip', ['-4', 'route', 'show']);
      assert.equal(routes.stdout.trim().split('\n').length, 1, routes.stdout);
      assert.match(routes.stdout, /\/30 dev veth-/);
    }
  });
});

netnsTest('ferry serve runs in each host and each API answers the other host', {}, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-cross-host-'));
  try {
    await withPair(async ({ a, b }) => {
      const serveA = await startServeIn(a, ['--data', join(dir, 'a')]);
      const serveB = await startServeIn(b, ['--data', join(dir, 'b')]);
      assert.equal(serveA.ready.apiUrl, `http://${a.ip}:${serveA.ready.apiPort}`);
      assert.equal(serveB.ready.nbdUrl, `nbd://${b.ip}:${serveB.ready.nbdPort}`);
      for (const [from, to] of [
        [b, serveA],
        [a, serveB],
      ] as const) {
        // Reaching the API is what this proves: from another address it answers 401
        // ERR_UNAUTHORIZED to a caller without a peer credential (src/api/auth.ts), 200 to one
        // with; either reply comes from Ferry's API in the other namespace.
        const answer = await probe(from, ['http-get', '--url', `${to.ready.apiUrl}/v1/health`]);
        const body = String(answer.body);
        if (answer.status !== 200) {
          assert.equal(answer.status, 401, body);
          assert.equal(
            (JSON.parse(body) as { error: { code: string } }).error.code,
            'ERR_UNAUTHORIZED',
          );
        }
      }
      assert.equal(await serveA.kill('SIGTERM'), 0, serveA.logLines.join('\n'));
      assert.equal(await serveB.kill('SIGTERM'), 0, serveB.logLines.join('\n'));
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

netnsTest('cutLink makes connections fail and restoreLink brings them back', {}, async () => {
  await withPair(async (pair) => {
    const echo = await spawnListening(pair.b, [TCP_PROBE, 'echo', '--listen', `${pair.b.ip}:0`]);
    const target = ['--target', `${pair.b.ip}:${echo.port}`, '--timeout-ms', '1000'];
    assert.equal((await probe(pair.a, ['connect', ...target])).ok, true);
    for (const end of ['both', 'a', 'b'] as const) {
      await pair.cutLink(end);
      const cut = await probe(pair.a, ['connect', ...target]);
      assert.equal(cut.ok, false, `cut at ${end}`);
      await pair.restoreLink(end);
      assert.equal((await probe(pair.a, ['connect', ...target])).ok, true, `restored ${end}`);
    }
  });
});

netnsTest('setRate shapes both ends with tbf and null removes it', {}, async () => {
  await withPair(async (pair) => {
    const qdiscs = async (): Promise<string[]> =>
      Promise.all(
        [pair.a, pair.b].map(
          async (host) => (await host.exec('tc', ['qdisc', 'show', 'dev', host.device])).stdout,
        ),
      );
    await pair.setRate(1000);
    for (const text of await qdiscs()) assert.match(text, /tbf .*rate 1Gbit burst 500000b/);
    await pair.setRate(100);
    for (const text of await qdiscs()) assert.match(text, /tbf .*rate 100Mbit burst 64Kb/);
    await pair.setRate(null);
    for (const text of await qdiscs()) assert.doesNotMatch(text, /tbf/);
  });
});

/** Sends `data` on `socket`, half-closes, and resolves with everything received until its end. */
function exchange(socket: Socket, data: Buffer): Promise<Buffer> {
  const parts: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => parts.push(chunk));
  socket.end(data);
  return new Promise((resolve, reject) => {
    socket.once('end', () => resolve(Buffer.concat(parts)));
    socket.once('error', reject);
  });
}

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

// Loopback only: this case needs no namespace (nor root).
test('the relay carries 8 MiB each way intact, under backpressure', async () => {
  const toServer = randomBytes(8 * MiB);
  const toClient = randomBytes(8 * MiB);
  let serverGot: Promise<Buffer> | undefined;
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    serverGot = exchange(socket, toClient);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  // A small bound (256 KiB) against 8 MiB: the reading side must pause and resume many times.
  const relay = await startDelayRelay({
    listenHost: '127.0.0.1',
    listenPort: 0,
    targetHost: '127.0.0.1',
    targetPort: (server.address() as AddressInfo).port,
    delayMs: 2,
    heldBytesMax: 256 * 1024,
  });
  try {
    const client = connect({ host: '127.0.0.1', port: relay.port, allowHalfOpen: true });
    const clientGot = await exchange(client, toServer);
    assert.equal(sha(clientGot), sha(toClient), 'server → client');
    assert.ok(serverGot !== undefined);
    assert.equal(sha(await serverGot), sha(toServer), 'client → server');
    assert.equal(relay.acceptedCount(), 1);
  } finally {
    await relay.close();
    server.close();
  }
});

netnsTest('the relay script adds delay between two hosts (timings printed)', {}, async (t) => {
  await withPair(async ({ a, b }) => {
    const echo = await spawnListening(b, [TCP_PROBE, 'echo', '--listen', `${b.ip}:0`]);
    const relay = await spawnListening(a, [
      RELAY_SCRIPT,
      '--listen',
      '127.0.0.1:0',
      '--target',
      `${b.ip}:${echo.port}`,
      '--delay-ms',
      '2',
    ]);
    const direct = ['--target', `${b.ip}:${echo.port}`];
    const relayed = ['--target', `127.0.0.1:${relay.port}`];
    const checked = await probe(a, ['echo-check', ...relayed, '--bytes', String(8 * MiB)]);
    assert.equal(checked.isIntact, true);
    const rttDirect = await probe(a, ['rtt', ...direct, '--count', '50']);
    const rttRelayed = await probe(a, ['rtt', ...relayed, '--count', '50']);
    t.diagnostic(
      `round trip median: direct ${Number(rttDirect.medianUs).toFixed(0)} µs, through a 2 ms ` +
        `relay ${Number(rttRelayed.medianUs).toFixed(0)} µs (expected about 4000 more)`,
    );
  });
});

netnsTest('dispose removes the namespaces and what ran in them', {}, async () => {
  const pair = await createHostPair();
  const sleeper = pair.a.spawn('sleep', ['60']);
  const names = [pair.a.ns, pair.b.ns];
  assert.ok(names.every((name) => listNamespacesSync().includes(name)));
  await pair.dispose();
  assert.ok(sleeper.exitCode !== null || sleeper.signalCode !== null, 'sleep still runs');
  assert.deepEqual(
    listNamespacesSync().filter((name) => names.includes(name)),
    [],
  );
  await pair.dispose();
});

netnsTest('cleanupStaleNamespaces removes what a dead run left, not a live one', {}, async () => {
  const deadPid = findDeadPid();
  const stale = `ferry-${deadPid}-0-a`;
  execFileSync('ip', ['netns', 'add', stale]);
  await withPair(async (pair) => {
    assert.ok(cleanupStaleNamespaces().includes(stale));
    const left = listNamespacesSync();
    assert.ok(!left.includes(stale));
    assert.ok(left.includes(pair.a.ns) && left.includes(pair.b.ns), 'a live pair was removed');
  });
});

/** A pid that no process has now (counting down from the kernel's usual maximum). */
function findDeadPid(): number {
  for (let pid = 4_194_000; pid > 1; pid -= 1) {
    try {
      process.kill(pid, 0);
    } catch {
      return pid;
    }
  }
  throw new Error('no free pid');
}
