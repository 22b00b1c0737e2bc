import assert from 'node:assert/strict';
import { mkdir, readdir, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { Agent } from '../../src/host/agent.js';
import type { Logger } from '../../src/util/logger.js';
import { makeTempDir } from './temp-dir.js';

const MIB = 1024 * 1024;

/** A logger that keeps the warnings, so tests can see what the agent skipped and why. */
function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const ignore = (): void => {};
  return {
    debug: ignore,
    info: ignore,
    error: ignore,
    warn: (_fields, message) => warnings.push(message ?? ''),
    warnings,
  };
}

test('agent: first open creates local; a created disk is served and listed', async () => {
  const dataDir = await makeTempDir();
  const agent = await Agent.open({ dataDir });
  try {
    const datastores = await agent.listDatastores();
    assert.deepEqual(
      datastores.map((d) => [d.name, d.path, d.diskCount, d.isAvailable]),
      [['local', join(agent.dataDir, 'datastores', 'local'), 0, true]],
    );
    const disk = await agent.createDisk({ name: 'vm1', sizeBytes: 4 * MIB });
    assert.equal(disk.datastore, 'local');
    assert.equal(disk.provisioning, 'thin');
    assert.equal(disk.generation, 1);
    assert.ok((disk.allocatedBytes ?? MIB) < MIB);
    const exported = agent.exports.lookup('vm1');
    assert.equal(exported?.device.size, 4 * MIB);
    assert.equal(exported?.description, '4M thin raw disk in datastore local');
    assert.deepEqual(
      agent.exports.list().map((e) => e.name),
      ['vm1'],
    );
    assert.deepEqual(await agent.listDisks(), [disk]);
    assert.equal((await agent.listDatastores())[0]?.diskCount, 1);
  } finally {
    await agent.close();
  }
});

test('agent: thick disks are allocated, thin ones are not', async () => {
  const agent = await Agent.open({ dataDir: await makeTempDir() });
  try {
    const thick = await agent.createDisk({
      name: 'thick',
      sizeBytes: 8 * MIB,
      provisioning: 'thick',
    });
    const thin = await agent.createDisk({ name: 'thin', sizeBytes: 8 * MIB, provisioning: 'thin' });
    assert.ok((thick.allocatedBytes ?? 0) >= 8 * MIB, `thick allocated ${thick.allocatedBytes}`);
    assert.ok((thin.allocatedBytes ?? MIB) < MIB, `thin allocated ${thin.allocatedBytes}`);
  } finally {
    await agent.close();
  }
});

test('agent: datastores and disks survive a reopen, data written before close is there', async () => {
  const dataDir = await makeTempDir();
  const extra = join(await makeTempDir(), 'ds2');
  await mkdir(extra);
  const first = await Agent.open({ dataDir });
  await first.addDatastore('ds2', extra);
  await first.createDisk({ name: 'a', sizeBytes: MIB });
  await first.createDisk({
    name: 'b',
    sizeBytes: 2 * MIB,
    datastore: 'ds2',
    provisioning: 'thick',
  });
  await first.exports.lookup('b')?.device.write(4096, Buffer.alloc(4096, 0x5a));
  await first.close();

  const second = await Agent.open({ dataDir });
  try {
    assert.deepEqual(
      (await second.listDatastores()).map((d) => [d.name, d.diskCount]),
      [
        ['local', 1],
        ['ds2', 1],
      ],
    );
    const disks = await second.listDisks();
    assert.deepEqual(
      disks.map((d) => [d.name, d.datastore, d.sizeBytes, d.provisioning]),
      [
        ['a', 'local', MIB, 'thin'],
        ['b', 'ds2', 2 * MIB, 'thick'],
      ],
    );
    const data = await second.exports.lookup('b')?.device.read(4096, 4096);
    assert.deepEqual(data, Buffer.alloc(4096, 0x5a));
  } finally {
    await second.close();
  }
});

test('agent: disk names are unique across datastores', async () => {
  const agent = await Agent.open({ dataDir: await makeTempDir() });
  try {
    const extra = await makeTempDir();
    await agent.addDatastore('ds2', extra);
    await agent.createDisk({ name: 'vm1', sizeBytes: MIB });
    await assert.rejects(agent.createDisk({ name: 'vm1', sizeBytes: MIB, datastore: 'ds2' }), {
      code: 'ERR_EXISTS',
    });
    await assert.rejects(agent.createDisk({ name: 'vm2', sizeBytes: MIB, datastore: 'nope' }), {
      code: 'ERR_NOT_FOUND',
    });
    assert.deepEqual(await readdir(extra), []);
  } finally {
    await agent.close();
  }
});

test('agent: the default datastore is local, else the only one, else the caller must say', async () => {
  const agent = await Agent.open({ dataDir: await makeTempDir() });
  try {
    await agent.addDatastore('one', await makeTempDir());
    await agent.removeDatastore('local');
    assert.equal((await agent.createDisk({ name: 'x', sizeBytes: MIB })).datastore, 'one');
    await agent.addDatastore('two', await makeTempDir());
    await assert.rejects(agent.createDisk({ name: 'y', sizeBytes: MIB }), {
      code: 'ERR_DATASTORE_AMBIGUOUS',
    });
  } finally {
    await agent.close();
  }
});

test('agent: remove drops the export connections, then deletes the files', async () => {
  const dropped: string[] = [];
  const agent = await Agent.open({
    dataDir: await makeTempDir(),
    dropExport: async (name) => {
      // The export must already be gone: no new connection may find a disk being removed.
      assert.equal(agent.exports.lookup(name), undefined);
      dropped.push(name);
    },
  });
  try {
    await agent.createDisk({ name: 'vm1', sizeBytes: MIB });
    const device = agent.exports.lookup('vm1')?.device;
    await agent.removeDisk('vm1');
    assert.deepEqual(dropped, ['vm1']);
    assert.equal(agent.exports.lookup('vm1'), undefined);
    await assert.rejects(device?.read(0, 512) ?? Promise.resolve(), { code: 'ESHUTDOWN' });
    assert.deepEqual(await readdir(join(agent.dataDir, 'datastores', 'local')), []);
    await assert.rejects(agent.removeDisk('vm1'), { code: 'ERR_NOT_FOUND' });
  } finally {
    await agent.close();
  }
});

test('agent: a datastore with disks cannot be removed', async () => {
  const agent = await Agent.open({ dataDir: await makeTempDir() });
  try {
    await agent.createDisk({ name: 'vm1', sizeBytes: MIB });
    await assert.rejects(agent.removeDatastore('local'), { code: 'ERR_DATASTORE_NOT_EMPTY' });
    await assert.rejects(agent.removeDatastore('nope'), { code: 'ERR_NOT_FOUND' });
  } finally {
    await agent.close();
  }
});

test('agent: a corrupt descriptor or a resized image skips that disk, with a warning', async () => {
  const dataDir = await makeTempDir();
  const first = await Agent.open({ dataDir });
  await first.createDisk({ name: 'good', sizeBytes: MIB });
  await first.createDisk({ name: 'broken', sizeBytes: MIB });
  await first.createDisk({ name: 'resized', sizeBytes: MIB });
  await first.close();
  const local = join(dataDir, 'datastores', 'local');
  await writeFile(join(local, 'broken.disk.json'), '{"version":1,"name":"broken"');
  await truncate(join(local, 'resized.raw'), 2 * MIB);

  const log = recordingLogger();
  const second = await Agent.open({ dataDir, log });
  try {
    assert.deepEqual(
      (await second.listDisks()).map((d) => d.name),
      ['good'],
    );
    assert.equal(log.warnings.length, 2, log.warnings.join('\n'));
    assert.ok(log.warnings.some((w) => w.includes(join(local, 'broken.disk.json'))));
    assert.ok(log.warnings.some((w) => w.includes('resized') && w.includes('descriptor says')));
    assert.deepEqual(second.warnings, log.warnings);
  } finally {
    await second.close();
  }
});

test('agent: import adopts a file, refuses the image of a served disk', async () => {
  const agent = await Agent.open({ dataDir: await makeTempDir() });
  try {
    const file = join(await makeTempDir(), 'src.img');
    await writeFile(file, Buffer.alloc(64 * 1024, 3));
    const disk = await agent.importDisk({ name: 'imp', file });
    assert.equal(disk.sizeBytes, 64 * 1024);
    assert.deepEqual(await agent.exports.lookup('imp')?.device.read(0, 16), Buffer.alloc(16, 3));
    await assert.rejects(agent.importDisk({ name: 'again', file: disk.image }), {
      code: 'ERR_EXISTS',
    });
  } finally {
    await agent.close();
  }
});

test('agent: one agent per data dir; a closed agent refuses changes', async () => {
  const dataDir = await makeTempDir();
  const agent = await Agent.open({ dataDir });
  await assert.rejects(Agent.open({ dataDir }), { code: 'ERR_DATA_DIR_LOCKED' });
  await agent.close();
  await agent.close();
  await assert.rejects(agent.createDisk({ name: 'x', sizeBytes: MIB }), {
    code: 'ERR_AGENT_CLOSED',
  });
  const again = await Agent.open({ dataDir });
  await again.close();
});

test('agent: a stale lock of a dead process is taken over', async () => {
  const dataDir = await makeTempDir();
  await writeFile(join(dataDir, 'agent.lock'), '2147483646\n');
  const agent = await Agent.open({ dataDir });
  await agent.close();
});

test('agent: concurrent creates of one name: exactly one wins', async () => {
  const agent = await Agent.open({ dataDir: await makeTempDir() });
  try {
    const results = await Promise.allSettled(
      [1, 2, 3].map(() => agent.createDisk({ name: 'race', sizeBytes: MIB })),
    );
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  } finally {
    await agent.close();
  }
});
