import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { Agent } from '../../src/host/agent.js';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { assertSameBytes, prng, randomBytes, startWriter } from '../migrate/harness.js';
import { makeTempDir } from './temp-dir.js';

const MIB = 1024 * 1024;
const DISKS = ['web-os', 'web-data'] as const;
const HOME_FILES: Record<string, string> = {
  'qemu.conf': '-m 512 -smp 2\n',
  'serial.log': 'boot ok\n'.repeat(100),
};

interface VmSetup {
  agent: Agent;
  dataDir: string;
  local: string;
  fast: string;
  devices: BlockDevice[];
  models: Buffer[];
}

/** An agent with datastores local and fast, and VM web in local: 2 disks, 2 files besides vm.json. */
async function openWithVm(sizeBytes = 8 * MIB, provisioning: 'thin' | 'thick' = 'thin') {
  const dataDir = await makeTempDir();
  const fast = join(dataDir, 'fast-store');
  await mkdir(fast);
  const agent = await Agent.open({ dataDir });
  await agent.addDatastore('fast', fast);
  const devices: BlockDevice[] = [];
  const models: Buffer[] = [];
  for (const [index, name] of DISKS.entries()) {
    await agent.createDisk({ name, sizeBytes, provisioning });
    const device = agent.exports.lookup(name)?.device;
    assert.ok(device);
    const model = randomBytes(sizeBytes, prng(10 + index));
    await device.write(0, model);
    devices.push(device);
    models.push(model);
  }
  const vm = await agent.createVm({ name: 'web', disks: [...DISKS] });
  for (const [file, text] of Object.entries(HOME_FILES)) await writeFile(join(vm.home, file), text);
  const local = join(dataDir, 'datastores', 'local');
  return { agent, dataDir, local, fast, devices, models } satisfies VmSetup;
}

async function assertHome(dir: string): Promise<void> {
  assert.deepEqual((await readdir(dir)).sort(), [...Object.keys(HOME_FILES), 'vm.json'].sort());
  for (const [file, text] of Object.entries(HOME_FILES)) {
    assert.equal(await readFile(join(dir, file), 'utf8'), text);
  }
  const config = JSON.parse(await readFile(join(dir, 'vm.json'), 'utf8'));
  assert.deepEqual(config.disks, [...DISKS]);
}

const FAST_AFTER_MOVE = [
  'web',
  'web-data.disk.json',
  'web-data.raw',
  'web-os.disk.json',
  'web-os.raw',
];

for (const method of METHOD_NAMES) {
  test(`vm move (${method}): home and both disks move while written, together; sources are gone`, async () => {
    const { agent, dataDir, local, fast, devices, models } = await openWithVm();
    try {
      const writers = devices.map((device, index) =>
        startWriter(device, models[index] as Buffer, 20 + index),
      );
      const move = await agent.moveVm(
        { name: 'web', datastore: 'fast', method, tuning: { downtimeTargetMs: 20 } },
        () => {},
      );
      const result = await move.done;
      for (const writer of writers) assert.ok((await writer.stop()) > 0);
      assert.deepEqual(result.disks, [...DISKS]);
      assert.equal(result.from, 'local');
      assert.equal((await agent.getVm('web')).datastore, 'fast');
      for (const [index, name] of DISKS.entries()) {
        const disk = await agent.getDisk(name);
        assert.equal(disk.datastore, 'fast');
        assert.equal(disk.generation, 2);
        const model = models[index] as Buffer;
        const device = devices[index] as BlockDevice;
        assertSameBytes(await device.read(0, model.length), model, `${name} export`);
        assertSameBytes(await readFile(join(fast, `${name}.raw`)), model, `${name} image`);
      }
      await assertHome(join(fast, 'web'));
      assert.deepEqual((await readdir(fast)).sort(), FAST_AFTER_MOVE);
      assert.deepEqual(
        (await readdir(local)).filter((name) => !name.startsWith('.')),
        [],
      );
      assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
    } finally {
      await agent.close();
    }
    const reopened = await Agent.open({ dataDir });
    try {
      assert.equal((await reopened.getVm('web')).datastore, 'fast');
    } finally {
      await reopened.close();
    }
  });
}

test('vm move: cancel keeps the home and both disks on the source, nothing at the destination', async () => {
  const { agent, local, fast, devices, models } = await openWithVm(32 * MIB, 'thick');
  try {
    const writers = devices.map((device, index) =>
      startWriter(device, models[index] as Buffer, 30 + index),
    );
    const move = await agent.moveVm(
      { name: 'web', datastore: 'fast', speedBytesPerSecond: 16 * MIB },
      () => {},
    );
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(move.migration.cancel(), true);
    await assert.rejects(move.done, { code: 'ERR_CANCELLED' });
    for (const writer of writers) await writer.stop();
    assert.deepEqual(await readdir(fast), []);
    assert.equal((await agent.getVm('web')).datastore, 'local');
    await assertHome(join(local, 'web'));
    for (const [index, name] of DISKS.entries()) {
      assert.equal((await agent.getDisk(name)).datastore, 'local');
      const model = models[index] as Buffer;
      const device = devices[index] as BlockDevice;
      assertSameBytes(await device.read(0, model.length), model, `${name} after cancel`);
    }
  } finally {
    await agent.close();
  }
});

test('vm move: a destination that fails for the second disk leaves nothing behind', async () => {
  // The seam the agent offers: a file already in the way of the second disk's image, so the
  // destination refuses it after the home and the first image were made there.
  const { agent, local, fast } = await openWithVm();
  try {
    await writeFile(join(fast, 'web-data.raw'), 'not yours');
    await assert.rejects(
      agent.moveVm({ name: 'web', datastore: 'fast' }, () => {}),
      {
        code: 'ERR_EXISTS',
      },
    );
    assert.deepEqual(await readdir(fast), ['web-data.raw']);
    assert.equal(await readFile(join(fast, 'web-data.raw'), 'utf8'), 'not yours');
    await assertHome(join(local, 'web'));
    for (const name of DISKS) assert.equal((await agent.getDisk(name)).datastore, 'local');
    assert.deepEqual(await readdir(join(agent.dataDir, 'journal')), []);
  } finally {
    await agent.close();
  }
});

test('vm: create checks its disks; a VM disk cannot be removed alone; remove keeps the disks', async () => {
  const { agent } = await openWithVm();
  try {
    await agent.createDisk({ name: 'spare', sizeBytes: MIB });
    await assert.rejects(agent.createVm({ name: 'db', disks: ['nope'] }), {
      code: 'ERR_NOT_FOUND',
    });
    await assert.rejects(agent.createVm({ name: 'db', disks: ['web-os'] }), { code: 'ERR_EXISTS' });
    await assert.rejects(agent.createVm({ name: 'db', disks: [] }), { code: 'ERR_BAD_VM_DISKS' });
    await assert.rejects(agent.createVm({ name: 'web', disks: ['spare'] }), {
      code: 'ERR_EXISTS',
    });
    await assert.rejects(agent.createVm({ name: '.db', disks: ['spare'] }), {
      code: 'ERR_BAD_NAME',
    });
    await assert.rejects(agent.removeDisk('web-os'), { code: 'ERR_DISK_BUSY' });
    await assert.rejects(
      agent.moveVm({ name: 'web', datastore: 'local' }, () => {}),
      {
        code: 'ERR_SAME_DATASTORE',
      },
    );
    const db = await agent.createVm({ name: 'db', disks: ['spare'], datastore: 'fast' });
    assert.equal(db.datastore, 'fast');
    assert.deepEqual(
      (await agent.listVms()).map((vm) => vm.name),
      ['db', 'web'],
    );
    await agent.removeVm('web');
    await assert.rejects(agent.getVm('web'), { code: 'ERR_NOT_FOUND' });
    assert.equal((await agent.getDisk('web-os')).datastore, 'local');
    await agent.removeDisk('web-os');
  } finally {
    await agent.close();
  }
});

/**
 * Leaves what a VM move of web to fast leaves when the agent dies in its commit: the home copied
 * (and, with `isHomePlaced`, renamed into place), the images copied, `descriptors` of them
 * written at the destination, and the journal record with the commit flag as given.
 */
async function leaveInterruptedVmMove(
  setup: VmSetup,
  options: { committed: boolean; descriptors: number; isHomePlaced: boolean },
): Promise<void> {
  const { dataDir, local, fast } = setup;
  const copy = join(fast, '.web.home-move');
  await mkdir(copy);
  for (const file of [...Object.keys(HOME_FILES), 'vm.json']) {
    await writeFile(join(copy, file), await readFile(join(local, 'web', file)));
  }
  if (options.isHomePlaced) await rename(copy, join(fast, 'web'));
  const disks = [];
  for (const [index, name] of DISKS.entries()) {
    const source = JSON.parse(await readFile(join(local, `${name}.disk.json`), 'utf8'));
    await writeFile(join(fast, `${name}.raw`), await readFile(join(local, `${name}.raw`)));
    if (index < options.descriptors) {
      const committed = { ...source, generation: source.generation + 1 };
      await writeFile(join(fast, `${name}.disk.json`), JSON.stringify(committed));
    }
    disks.push({
      disk: name,
      from: 'local',
      generation: source.generation,
      sourceImage: `${name}.raw`,
      image: `${name}.raw`,
      redoLogs: [],
    });
  }
  const record = {
    version: 2,
    id: 'vm123',
    vm: 'web',
    homeFrom: 'local',
    to: 'fast',
    disks,
    committed: options.committed,
    method: 'mirror',
    startedAt: new Date().toISOString(),
  };
  await writeFile(join(dataDir, 'journal', 'vm123.json'), JSON.stringify(record));
}

const RECOVERY_CASES = [
  { committed: false, descriptors: 0, isHomePlaced: false },
  // The commit was cut short: one descriptor and the home were written, the flag was not.
  { committed: false, descriptors: 1, isHomePlaced: true },
  { committed: true, descriptors: 2, isHomePlaced: true },
];

for (const options of RECOVERY_CASES) {
  test(`vm move recovery: committed ${options.committed}, ${options.descriptors} descriptor(s) written → ${options.committed ? 'destination' : 'source'}`, async () => {
    const setup = await openWithVm(2 * MIB);
    await setup.agent.close();
    await leaveInterruptedVmMove(setup, options);
    const reopened = await Agent.open({ dataDir: setup.dataDir });
    try {
      const where = options.committed ? 'fast' : 'local';
      assert.equal((await reopened.getVm('web')).datastore, where);
      for (const [index, name] of DISKS.entries()) {
        const disk = await reopened.getDisk(name);
        assert.equal(disk.datastore, where);
        assert.equal(disk.generation, options.committed ? 2 : 1);
        const device = reopened.exports.lookup(name)?.device as BlockDevice;
        const model = setup.models[index] as Buffer;
        assertSameBytes(await device.read(0, model.length), model, `${name} served`);
      }
      await assertHome(join(options.committed ? setup.fast : setup.local, 'web'));
      const localLeft = (await readdir(setup.local)).filter((name) => !name.startsWith('.'));
      if (options.committed) {
        assert.deepEqual(localLeft, []);
        assert.deepEqual((await readdir(setup.fast)).sort(), FAST_AFTER_MOVE);
      } else {
        assert.deepEqual(await readdir(setup.fast), []);
        assert.equal(localLeft.length, 5);
      }
      assert.deepEqual(await readdir(join(setup.dataDir, 'journal')), []);
      assert.ok(
        reopened.warnings.some((w) =>
          w.includes(options.committed ? 'had committed' : 'had not committed'),
        ),
      );
    } finally {
      await reopened.close();
    }
  });
}
