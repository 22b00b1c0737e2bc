import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { normalizePeerUrl, PeerRegistry } from '../../src/host/peers.js';
import type { PskKey } from '../../src/nbd/psk-file.js';
import { makeTempDir } from './temp-dir.js';

function newKey(identity = 'ferry'): PskKey {
  return { identity, key: randomBytes(32) };
}

test('peers: add persists the list and a 0600 key file in psktool format; load reads them back', async () => {
  const dataDir = await makeTempDir();
  const registry = await PeerRegistry.load(dataDir);
  assert.deepEqual(registry.list(), []);
  const key = newKey();
  const added = await registry.add({ name: 'hostb', url: 'http://HostB:7480/', key });
  assert.equal(added.url, 'http://hostb:7480');

  const list = JSON.parse(await readFile(join(dataDir, 'hosts.json'), 'utf8'));
  assert.deepEqual(list, {
    version: 1,
    hosts: [{ name: 'hostb', url: 'http://hostb:7480', identity: 'ferry' }],
  });
  const keyPath = join(dataDir, 'hosts', 'hostb.psk');
  assert.equal(await readFile(keyPath, 'utf8'), `ferry:${key.key.toString('hex')}\n`);
  assert.equal((await stat(keyPath)).mode & 0o777, 0o600);
  assert.equal((await stat(join(dataDir, 'hosts'))).mode & 0o777, 0o700);

  const reloaded = await PeerRegistry.load(dataDir);
  assert.equal(reloaded.list().length, 1);
  const peer = reloaded.require('hostb');
  assert.equal(peer.url, 'http://hostb:7480');
  assert.ok(peer.key.key.equals(key.key));
  assert.ok(reloaded.keyFor('ferry')?.equals(key.key));
  assert.equal(reloaded.keyFor('other'), undefined);
});

test('peers: remove forgets the host and deletes its key; unknown names are ERR_NOT_FOUND', async () => {
  const dataDir = await makeTempDir();
  const registry = await PeerRegistry.load(dataDir);
  await registry.add({ name: 'hostb', url: 'http://127.0.0.1:7480', key: newKey() });
  await registry.remove('hostb');
  assert.equal(registry.get('hostb'), undefined);
  assert.equal(registry.keyFor('ferry'), undefined);
  await assert.rejects(stat(join(dataDir, 'hosts', 'hostb.psk')), { code: 'ENOENT' });
  assert.deepEqual((await PeerRegistry.load(dataDir)).list(), []);
  await assert.rejects(registry.remove('hostb'), { code: 'ERR_NOT_FOUND' });
  assert.throws(() => registry.require('nope'), /no host named nope; see ferry host list/);
});

test('peers: bad names, URLs and keys are refused and nothing is written', async () => {
  const dataDir = await makeTempDir();
  const registry = await PeerRegistry.load(dataDir);
  const url = 'http://hostb:7480';
  await assert.rejects(registry.add({ name: '-b', url, key: newKey() }), {
    code: 'ERR_BAD_NAME',
    message: /not a valid host name/,
  });
  for (const bad of [
    'hostb:7480',
    'ftp://hostb:21',
    'http://hostb',
    'http://hostb:7480/v1',
    'http://u:p@hostb:7480',
    'http://hostb:7480?x=1',
    'not a url',
  ]) {
    await assert.rejects(registry.add({ name: 'b', url: bad, key: newKey() }), {
      code: 'ERR_BAD_URL',
      message: /use http:\/\/HOST:PORT/,
    });
  }
  await assert.rejects(registry.add({ name: 'b', url, key: newKey('has space') }), {
    code: 'ERR_BAD_KEY',
  });
  await assert.rejects(
    registry.add({ name: 'b', url, key: { identity: 'k', key: randomBytes(4) } }),
    {
      code: 'ERR_BAD_KEY',
      message: /4 bytes/,
    },
  );
  await assert.rejects(stat(join(dataDir, 'hosts.json')), { code: 'ENOENT' });
});

test('peers: a taken name, or a shared identity with another key, is ERR_EXISTS', async () => {
  const dataDir = await makeTempDir();
  const registry = await PeerRegistry.load(dataDir);
  const shared = newKey();
  await registry.add({ name: 'b', url: 'http://b:7480', key: shared });
  await assert.rejects(registry.add({ name: 'b', url: 'http://c:7480', key: shared }), {
    code: 'ERR_EXISTS',
  });
  await assert.rejects(registry.add({ name: 'c', url: 'http://c:7480', key: newKey() }), {
    code: 'ERR_EXISTS',
    message: /already uses the key identity ferry with another key/,
  });
  // One key file copied to every host: the same identity and key for several peers is fine.
  await registry.add({ name: 'c', url: 'http://c:7480', key: shared });
  const [first, second] = await Promise.allSettled([
    registry.add({ name: 'd', url: 'http://d:7480', key: shared }),
    registry.add({ name: 'd', url: 'http://d:7480', key: shared }),
  ]);
  assert.equal(first.status, 'fulfilled');
  assert.equal(second.status, 'rejected', 'concurrent adds of one name: one wins');
  assert.deepEqual(
    (await PeerRegistry.load(dataDir)).list().map((peer) => peer.name),
    ['b', 'c', 'd'],
  );
});

test('peers: a list naming a missing or broken key file stops the load, naming the file', async () => {
  const dataDir = await makeTempDir();
  const registry = await PeerRegistry.load(dataDir);
  await registry.add({ name: 'b', url: 'http://b:7480', key: newKey() });
  const keyPath = join(dataDir, 'hosts', 'b.psk');
  await writeFile(keyPath, 'ferry:zz\n');
  await assert.rejects(PeerRegistry.load(dataDir), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_BAD_DESCRIPTOR');
    assert.ok(error.message.includes(keyPath), error.message);
    return true;
  });
  await writeFile(keyPath, `other:${randomBytes(32).toString('hex')}\n`);
  await assert.rejects(PeerRegistry.load(dataDir), /no line for identity ferry/);
  await writeFile(join(dataDir, 'hosts.json'), '{"version":1,"hosts":[{"name":"b"}]}');
  await assert.rejects(PeerRegistry.load(dataDir), { code: 'ERR_BAD_DESCRIPTOR' });
});

test('peers: URLs are normalized to scheme://host:port', () => {
  assert.equal(normalizePeerUrl(' http://B.example:7480 '), 'http://b.example:7480');
  assert.equal(normalizePeerUrl('https://b:443/'), 'https://b:443');
  assert.equal(normalizePeerUrl('http://b:80'), 'http://b:80');
  assert.equal(normalizePeerUrl('http://[::1]:7480'), 'http://[::1]:7480');
});
