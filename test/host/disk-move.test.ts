import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { createRawImage, openRawFile } from '../../src/block/raw-file.js';
import { Agent } from '../../src/host/agent.js';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import type { MigrationEvent } from '../../src/migrate/migration.js';
import { assertSameBytes, prng, randomBytes, startWriter } from '../migrate/harness.js';
import { makeTempDir } from './temp-dir.js';

const MIB = 1024 * 1024;

async function openWithFast(): Promise<{ agent: Agent; fast: string; dataDir: string }> {
  const dataDir = await makeTempDir();
  const fast = join(dataDir, 'fast-store');
  await mkdir(fast);
  const agent = await Agent.open({ dataDir });
  await agent.addDatastore('fast', fast);
  return { agent, fast, dataDir };
}

for (const method of METHOD_NAMES) {
  test(`disk move (${method}): the disk moves while written, the old image is gone, every write is there`, async () => {
    const { agent, fast } = await openWithFast();
    try {
      await agent.createDisk({ name: 'vm1', sizeBytes: 16 * MIB });
      const device = agent.exports.lookup('vm1')?.device;
      assert.ok(device);
      const model = Buffer.alloc(16 * MIB);
      const initial = randomBytes(4 * MIB, prng(1));
      await device.write(2 * MIB, initial);
      initial.copy(model, 2 * MIB);
      const events: MigrationEvent[] = [];
      const writer = startWriter(device, model, 2);
      const move = await agent.moveDisk(
        { name: 'vm1', datastore: 'fast', method, tuning: { downtimeTargetMs: 20 } },
        (event) => events.push(event),
      );
      const result = await move.done;
      const writes = await writer.stop();
      assert.ok(writes > 0);
      const disk = await agent.getDisk('vm1');
      assert.equal(disk.datastore, 'fast');
      assert.equal(disk.generation, 2);
      assert.ok(
        result.downtimeMs >= 0 && result.downtimeMs < 1000,
        `downtime ${result.downtimeMs}`,
      );
      assert.ok(events.some((event) => event.type === 'switchover'));
      // Through the export (the same Switch the guest used) and directly in the new image.
      assertSameBytes(await device.read(0, model.length), model, 'export after the move');
      assertSameBytes(await readFile(join(fast, 'vm1.raw')), model, 'destination image');
      const localFiles = await readdir(join(agent.dataDir, 'datastores', 'local'));
      assert.deepEqual(
        localFiles.filter((name) => !name.startsWith('.')),
        [],
      );
      assert.deepEqual((await readdir(fast)).sort(), ['vm1.disk.json', 'vm1.raw']);
      assert.deepEqual(await readdir(join(agent.dataDir, 'journal')), []);
    } finally {
      await agent.close();
    }
  });
}

test('disk move: cancel keeps the disk on the source and deletes the partial copy', async () => {
  const { agent, fast } = await openWithFast();
  try {
    await agent.createDisk({ name: 'vm1', sizeBytes: 64 * MIB, provisioning: 'thick' });
    const device = agent.exports.lookup('vm1')?.device;
    assert.ok(device);
    // Data everywhere: a fresh thick image reads as holes (unwritten extents) and copies at once.
    const model = randomBytes(64 * MIB, prng(6));
    await device.write(0, model);
    const writer = startWriter(device, model, 3);
    const move = await agent.moveDisk(
      { name: 'vm1', datastore: 'fast', speedBytesPerSecond: 16 * MIB },
      () => {},
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(move.migration.cancel(), true);
    await assert.rejects(move.done, { code: 'ERR_CANCELLED' });
    await writer.stop();
    assert.equal((await agent.getDisk('vm1')).datastore, 'local');
    assert.deepEqual(await readdir(fast), []);
    assertSameBytes(await device.read(0, model.length), model, 'source after cancel');
  } finally {
    await agent.close();
  }
});

test('disk move: refuses the same datastore, an unknown one, and a second move of one disk', async () => {
  const { agent } = await openWithFast();
  try {
    await agent.createDisk({ name: 'vm1', sizeBytes: 64 * MIB });
    await assert.rejects(
      agent.moveDisk({ name: 'vm1', datastore: 'local' }, () => {}),
      {
        code: 'ERR_SAME_DATASTORE',
      },
    );
    await assert.rejects(
      agent.moveDisk({ name: 'vm1', datastore: 'nope' }, () => {}),
      {
        code: 'ERR_NOT_FOUND',
      },
    );
    await assert.rejects(
      agent.moveDisk({ name: 'nope', datastore: 'fast' }, () => {}),
      {
        code: 'ERR_NOT_FOUND',
      },
    );
    const move = await agent.moveDisk(
      { name: 'vm1', datastore: 'fast', speedBytesPerSecond: 8 * MIB },
      () => {},
    );
    await assert.rejects(
      agent.moveDisk({ name: 'vm1', datastore: 'fast' }, () => {}),
      {
        code: 'ERR_DISK_BUSY',
      },
    );
    await assert.rejects(agent.removeDisk('vm1'), { code: 'ERR_DISK_BUSY' });
    move.migration.setSpeed(0);
    await move.done;
  } finally {
    await agent.close();
  }
});

/** Writes the files a move leaves at a given point, as if the agent died there. */
async function leaveInterruptedMove(
  dataDir: string,
  fast: string,
  options: { committed: boolean; redoLogs?: Array<{ offset: number; data: Buffer }> },
): Promise<Buffer> {
  const local = join(dataDir, 'datastores', 'local');
  const source = JSON.parse(await readFile(join(local, 'vm1.disk.json'), 'utf8'));
  const sourceData = await readFile(join(local, 'vm1.raw'));
  const redoNames: string[] = [];
  const expected = Buffer.from(sourceData);
  for (const [index, log] of (options.redoLogs ?? []).entries()) {
    const name = `.vm1.redo-${index + 1}.raw`;
    await createRawImage(join(fast, name), sourceData.length, 'thin');
    const device = await openRawFile(join(fast, name), { provisioning: 'thin' });
    await device.write(log.offset, log.data);
    await device.close();
    log.data.copy(expected, log.offset);
    redoNames.push(name);
  }
  await writeFile(
    join(dataDir, 'journal', 'abc123.json'),
    JSON.stringify({
      version: 1,
      id: 'abc123',
      disk: 'vm1',
      from: 'local',
      to: 'fast',
      generation: source.generation,
      sourceImage: 'vm1.raw',
      image: 'vm1.raw',
      redoLogs: redoNames,
      method: 'mirror',
      startedAt: new Date().toISOString(),
    }),
  );
  await writeFile(
    join(fast, 'vm1.raw'),
    options.committed ? sourceData : Buffer.alloc(sourceData.length),
  );
  if (options.committed) {
    await writeFile(
      join(fast, 'vm1.disk.json'),
      JSON.stringify({ ...source, generation: source.generation + 1 }),
    );
  }
  return expected;
}

for (const committed of [false, true]) {
  test(`disk move recovery: a move interrupted ${committed ? 'after' : 'before'} its commit serves the ${committed ? 'destination' : 'source'}`, async () => {
    const { agent, fast, dataDir } = await openWithFast();
    await agent.createDisk({ name: 'vm1', sizeBytes: 4 * MIB });
    const data = randomBytes(MIB, prng(4));
    await agent.exports.lookup('vm1')?.device.write(MIB, data);
    await agent.close();
    const expected = await leaveInterruptedMove(dataDir, fast, { committed });
    const reopened = await Agent.open({ dataDir });
    try {
      const disk = await reopened.getDisk('vm1');
      assert.equal(disk.datastore, committed ? 'fast' : 'local');
      assert.equal(disk.generation, committed ? 2 : 1);
      const device = reopened.exports.lookup('vm1')?.device;
      assertSameBytes(await (device as BlockDevice).read(0, expected.length), expected, 'served');
      assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
      const local = await readdir(join(dataDir, 'datastores', 'local'));
      assert.deepEqual(local.sort(), committed ? [] : ['vm1.disk.json', 'vm1.raw']);
      assert.deepEqual((await readdir(fast)).sort(), committed ? ['vm1.disk.json', 'vm1.raw'] : []);
      assert.ok(
        reopened.warnings.some((w) =>
          w.includes(committed ? 'had committed' : 'had not committed'),
        ),
      );
    } finally {
      await reopened.close();
    }
  });
}

test('disk move recovery: writes that live only in redo logs are merged back into the source', async () => {
  const { agent, fast, dataDir } = await openWithFast();
  await agent.createDisk({ name: 'vm1', sizeBytes: 4 * MIB });
  await agent.close();
  const random = prng(9);
  const expected = await leaveInterruptedMove(dataDir, fast, {
    committed: false,
    redoLogs: [
      { offset: 0, data: randomBytes(128 * 1024, random) },
      { offset: 64 * 1024, data: randomBytes(64 * 1024, random) },
    ],
  });
  const reopened = await Agent.open({ dataDir });
  try {
    const device = reopened.exports.lookup('vm1')?.device as BlockDevice;
    assertSameBytes(await device.read(0, expected.length), expected, 'source after merge');
    assert.deepEqual(await readdir(fast), []);
  } finally {
    await reopened.close();
  }
});
