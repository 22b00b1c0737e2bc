import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { QemuErrorCode, QmpError } from '../../../src/host/qemu/qemu-errors.js';
import { QmpClient, type QmpEvent } from '../../../src/host/qemu/qmp-client.js';
import { makeTempDir } from '../temp-dir.js';
import { type FakeCommand, type FakePeer, startFakeQmp } from './fake-qmp-server.js';

test('qmp: connect negotiates capabilities, execute resolves with return', async (t) => {
  const { path } = await startFakeQmp((command, peer) => {
    if (command.execute === 'query-status') peer.reply(command, { status: 'running' });
  });
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 });
  t.after(() => qmp.close());
  assert.deepEqual(await qmp.execute('query-status'), { status: 'running' });
});

test('qmp: several commands in flight are matched by id, not by order', async (t) => {
  const held: { command: FakeCommand; peer: FakePeer }[] = [];
  const { path } = await startFakeQmp((command, peer) => {
    held.push({ command, peer });
    if (held.length === 3) {
      for (const { command: c, peer: p } of held.reverse()) p.reply(c, c.arguments?.n);
    }
  });
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 });
  t.after(() => qmp.close());
  const results = await Promise.all([1, 2, 3].map((n) => qmp.execute('echo', { n })));
  assert.deepEqual(results, [1, 2, 3]);
});

test('qmp: an error reply rejects with QmpError carrying class, desc and the command', async (t) => {
  const { path } = await startFakeQmp((command, peer) =>
    peer.fail(command, 'CommandNotFound', 'The command nope has not been found'),
  );
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 });
  t.after(() => qmp.close());
  await assert.rejects(qmp.execute('nope'), (error: unknown) => {
    assert.ok(error instanceof QmpError);
    assert.equal(error.code, QemuErrorCode.QmpCommand);
    assert.equal(error.qmpClass, 'CommandNotFound');
    assert.equal(error.desc, 'The command nope has not been found');
    assert.match(error.message, /QMP command nope/);
    return true;
  });
});

test('qmp: a wait armed before execute sees an event sent before the reply', async (t) => {
  const { path } = await startFakeQmp((command, peer) => {
    peer.event('STOP');
    peer.event('MIGRATION', { status: 'setup' });
    peer.event('MIGRATION', { status: 'active' });
    peer.reply(command);
  });
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 });
  t.after(() => qmp.close());
  const seen: QmpEvent[] = [];
  const stop = qmp.onEvent((event) => seen.push(event));
  const active = qmp.waitForEvent('MIGRATION', {
    predicate: (event) => event.data.status === 'active',
    timeoutMs: 2_000,
  });
  await qmp.execute('migrate', { uri: 'unix:/nowhere' });
  const event = await active;
  assert.deepEqual(event, {
    event: 'MIGRATION',
    data: { status: 'active' },
    timestamp: { seconds: 1, microseconds: 2 },
  });
  stop();
  assert.deepEqual(
    seen.map((e) => e.event),
    ['STOP', 'MIGRATION', 'MIGRATION'],
  );
});

test('qmp: waits and commands have limits', async (t) => {
  const { path } = await startFakeQmp(() => {});
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 });
  t.after(() => qmp.close());
  await assert.rejects(qmp.execute('slow', undefined, { timeoutMs: 50 }), {
    code: QemuErrorCode.Timeout,
    message: /did not answer QMP command slow within 50 ms/,
  });
  await assert.rejects(qmp.waitForEvent('RESUME', { timeoutMs: 50 }), {
    code: QemuErrorCode.Timeout,
  });
  const abort = new AbortController();
  const wait = qmp.waitForEvent('RESUME', { signal: abort.signal });
  abort.abort(new Error('caller gave up'));
  await assert.rejects(wait, /caller gave up/);
});

test('qmp: when QEMU goes away, pending commands and waits reject, closed resolves', async () => {
  const { path, peers } = await startFakeQmp(() => {});
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000 });
  const command = qmp.execute('quit');
  const wait = qmp.waitForEvent('SHUTDOWN');
  let isCloseEmitted = false;
  qmp.once('close', () => {
    isCloseEmitted = true;
  });
  peers[0]?.socket.destroy();
  await assert.rejects(command, { code: QemuErrorCode.QmpClosed, message: /command quit/ });
  await assert.rejects(wait, { code: QemuErrorCode.QmpClosed, message: /event SHUTDOWN/ });
  await qmp.closed;
  assert.ok(isCloseEmitted);
  assert.ok(qmp.isClosed);
  await assert.rejects(qmp.execute('query-status'), { code: QemuErrorCode.QmpClosed });
});

test('qmp: a line over the limit ends the connection as a protocol error', async () => {
  const { path } = await startFakeQmp((command, peer) => {
    peer.socket.write(`{"return": "${'x'.repeat(4096)}`);
    peer.socket.write(`${'y'.repeat(4096)}", "id": ${JSON.stringify(command.id)}}\n`);
  });
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000, lineMaxBytes: 1024 });
  await assert.rejects(qmp.execute('query-qmp-schema'), (error: Error) => {
    assert.equal((error as { code?: string }).code, QemuErrorCode.QmpClosed);
    assert.equal((error.cause as { code?: string }).code, QemuErrorCode.QmpProtocol);
    return true;
  });
  await qmp.closed;
});

test('qmp: in-flight commands are bounded', async (t) => {
  const { path } = await startFakeQmp(() => {});
  const qmp = await QmpClient.connect(path, { timeoutMs: 2_000, inFlightMax: 2 });
  t.after(() => qmp.close());
  const first = qmp.execute('a', undefined, { timeoutMs: 100 }).catch(() => {});
  const second = qmp.execute('b', undefined, { timeoutMs: 100 }).catch(() => {});
  await assert.rejects(qmp.execute('c'), { code: QemuErrorCode.QmpBusy });
  await Promise.all([first, second]);
});

test('qmp: connect retries until QEMU creates its socket, and gives up at the limit', async (t) => {
  const dir = await makeTempDir('ferry-qmp-');
  const late = join(dir, 'late.sock');
  const connecting = QmpClient.connect(late, { timeoutMs: 3_000 });
  await sleep(150);
  await startFakeQmp(() => {}, late);
  const qmp = await connecting;
  t.after(() => qmp.close());

  await assert.rejects(QmpClient.connect(join(dir, 'never.sock'), { timeoutMs: 100 }), {
    code: QemuErrorCode.QmpConnect,
    message: /within 100 ms \(ENOENT\)/,
  });
});

test('qmp: a listener that never greets is a connect error, not a hang', async (t) => {
  const path = join(await makeTempDir('ferry-qmp-'), 'mute.sock');
  const server = createServer(() => {});
  server.listen(path);
  await once(server, 'listening');
  t.after(() => {
    server.close();
  });
  await assert.rejects(QmpClient.connect(path, { timeoutMs: 200 }), {
    code: QemuErrorCode.QmpConnect,
    message: /no greeting/,
  });
});
