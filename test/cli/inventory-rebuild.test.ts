/**
 * ferry.db is a copy: deleting it and restarting `ferry serve` finds the datastores and disks
 * again from the datastores themselves (the authority), with this host in the hosts table.
 */
import assert from 'node:assert/strict';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { DATABASE_FILE, openDatabase } from '../../src/control/database.js';
import { makeTempDir } from '../host/temp-dir.js';
import { type ServeProcess, startServe } from './ferry-process.js';

async function post(serve: ServeProcess, path: string, body: object): Promise<void> {
  const response = await fetch(`${serve.ready.apiUrl}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  assert.ok(response.ok, `${path}: ${response.status} ${await response.text()}`);
}

function serveIn(dataDir: string): Promise<ServeProcess> {
  return startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
    '--name',
    'h1',
  ]);
}

async function stop(serve: ServeProcess): Promise<void> {
  serve.child.kill('SIGTERM');
  assert.equal(await serve.exited, 0);
}

test('inventory: deleting ferry.db and restarting finds every datastore and disk again', async () => {
  const dataDir = await makeTempDir();
  const first = await serveIn(dataDir);
  try {
    await mkdir(join(dataDir, 'b'), { recursive: true });
    await post(first, '/v1/datastores', { name: 'b', path: join(dataDir, 'b') });
    await post(first, '/v1/disks', { name: 'i1', size: 1024 * 1024 });
    await post(first, '/v1/disks', { name: 'i2', size: 2 * 1024 * 1024, datastore: 'b' });
  } finally {
    await stop(first);
  }
  for (const suffix of ['', '-wal', '-shm'])
    await rm(join(dataDir, `${DATABASE_FILE}${suffix}`), { force: true });

  await stop(await serveIn(dataDir));
  const db = openDatabase(join(dataDir, DATABASE_FILE));
  try {
    const hosts = db.prepare('SELECT name, is_self FROM inventory_hosts').all();
    assert.deepEqual(hosts, [{ name: 'h1', is_self: 1 }]);
    const datastores = db.prepare('SELECT name FROM inventory_datastores ORDER BY name').all() as {
      name: string;
    }[];
    assert.ok(
      datastores.some((row) => row.name === 'b'),
      JSON.stringify(datastores),
    );
    assert.equal(datastores.length, 2, JSON.stringify(datastores));
    const disks = db
      .prepare('SELECT name, datastore, size_bytes FROM inventory_disks ORDER BY name')
      .all() as {
      name: string;
      datastore: string;
      size_bytes: number;
    }[];
    assert.deepEqual(
      disks.map((row) => [row.name, row.size_bytes]),
      [
        ['i1', 1024 * 1024],
        ['i2', 2 * 1024 * 1024],
      ],
    );
    assert.equal(disks[1]?.datastore, 'b');
    assert.notEqual(disks[0]?.datastore, 'b');
    assert.deepEqual(db.prepare('SELECT * FROM inventory_vms').all(), []);
  } finally {
    db.close();
  }
});
