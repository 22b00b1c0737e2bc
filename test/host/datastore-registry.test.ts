import assert from 'node:assert/strict';
import { chmod, mkdir, readFile, realpath, symlink, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { DatastoreRegistry } from '../../src/host/datastore-registry.js';
import { makeTempDir } from './temp-dir.js';

test('registry: first load registers local under the data dir and persists it', async () => {
  const dataDir = await realpath(await makeTempDir());
  const registry = await DatastoreRegistry.load(dataDir);
  assert.deepEqual(
    registry.list().map((d) => [d.name, d.path]),
    [['local', join(dataDir, 'datastores', 'local')]],
  );
  const saved = JSON.parse(await readFile(join(dataDir, 'datastores.json'), 'utf8'));
  assert.deepEqual(saved, {
    version: 1,
    datastores: [{ name: 'local', path: join(dataDir, 'datastores', 'local') }],
  });
});

test('registry: add persists, refuses duplicates by name and by path', async () => {
  const dataDir = await realpath(await makeTempDir());
  const registry = await DatastoreRegistry.load(dataDir);
  const dir = join(dataDir, 'fast');
  await mkdir(dir);
  await registry.add('fast', dir);
  await assert.rejects(registry.add('fast', dataDir), { code: 'ERR_EXISTS' });
  const alias = join(dataDir, 'alias');
  await symlink(dir, alias);
  await assert.rejects(registry.add('other', alias), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_EXISTS');
    assert.match(error.message, /already datastore fast/);
    return true;
  });
  const reloaded = await DatastoreRegistry.load(dataDir);
  assert.deepEqual(
    reloaded.list().map((d) => d.name),
    ['local', 'fast'],
  );
});

test('registry: add refuses bad names and paths that are not writable directories', async () => {
  const dataDir = await realpath(await makeTempDir());
  const registry = await DatastoreRegistry.load(dataDir);
  const file = join(dataDir, 'file');
  await writeFile(file, '');
  await assert.rejects(registry.add('-x', dataDir), { code: 'ERR_BAD_NAME' });
  await assert.rejects(registry.add('a', 'relative/dir'), { code: 'ERR_BAD_PATH' });
  await assert.rejects(registry.add('a', join(dataDir, 'absent')), { code: 'ERR_BAD_PATH' });
  await assert.rejects(registry.add('a', file), { code: 'ERR_BAD_PATH' });
  if (process.getuid?.() !== 0) {
    const readOnly = join(dataDir, 'ro');
    await mkdir(readOnly);
    await chmod(readOnly, 0o555);
    await assert.rejects(registry.add('a', readOnly), { code: 'ERR_BAD_PATH' });
  }
});

test('registry: remove refuses a datastore holding a descriptor, even a broken one', async () => {
  const dataDir = await realpath(await makeTempDir());
  const registry = await DatastoreRegistry.load(dataDir);
  const dir = join(dataDir, 'ds2');
  await mkdir(dir);
  await registry.add('ds2', dir);
  await writeFile(join(dir, 'x.disk.json'), 'not json');
  await assert.rejects(registry.remove('ds2'), { code: 'ERR_DATASTORE_NOT_EMPTY' });
  await assert.rejects(registry.remove('nope'), { code: 'ERR_NOT_FOUND' });
  await unlink(join(dir, 'x.disk.json'));
  await registry.remove('ds2');
  assert.deepEqual(
    (await DatastoreRegistry.load(dataDir)).list().map((d) => d.name),
    ['local'],
  );
});

test('registry: a corrupt registry file stops the load with its path in the message', async () => {
  const dataDir = await realpath(await makeTempDir());
  await writeFile(join(dataDir, 'datastores.json'), '{"version":1,"datastores":[{"name":"a"}]}');
  await assert.rejects(DatastoreRegistry.load(dataDir), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_BAD_DESCRIPTOR');
    assert.ok(error.message.includes(join(dataDir, 'datastores.json')));
    return true;
  });
});
