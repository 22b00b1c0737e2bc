/**
 * Copy offload on real file systems (issue 9): a disk moved between two datastores on one loop-
 * mounted ext4, XFS or Btrfs while a guest writes, and the job saying which way the kernel moved
 * the data: reflinks where the file system shares extents (XFS, Btrfs), copy_file_range on ext4,
 * the agent's own reads and writes between two file systems the kernel will not copy across. A
 * destination that fills up fails the move with the disk still served from the source, whole.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { statAllocatedBytes } from '../../src/block/raw-file.js';
import { Agent } from '../../src/host/agent.js';
import type { CopyPath } from '../../src/migrate/copy-offload.js';
import { METHOD_NAMES, type MethodName } from '../../src/migrate/method.js';
import type { MigrationEvent } from '../../src/migrate/migration.js';
import { assertSameBytes, prng, randomBytes, startWriter } from '../migrate/harness.js';
import {
  FILE_SYSTEM_TYPES,
  type FileSystemType,
  type LoopMount,
  mountLoopFs,
} from './loop-mount.js';

const MIB = 1024 * 1024;
const GIB = 1024 * MIB;

const mounts = new Map<FileSystemType, LoopMount>();
let tiny: LoopMount;

before(async () => {
  for (const type of FILE_SYSTEM_TYPES) mounts.set(type, await mountLoopFs(type, 2 * GIB));
  tiny = await mountLoopFs('ext4', 160 * MIB);
});

after(async () => {
  for (const mount of [...mounts.values(), tiny]) await mount?.unmount();
});

function mountOf(type: FileSystemType): LoopMount {
  const mount = mounts.get(type);
  assert.ok(mount, `${type} is mounted`);
  return mount;
}

/** An agent whose data dir (and so its `local` datastore) is in `home`, and `fast` in `fastDir`. */
async function openAgent(name: string, home: string, fastDir: string): Promise<Agent> {
  const dataDir = join(home, name);
  await mkdir(fastDir, { recursive: true });
  const agent = await Agent.open({ dataDir });
  await agent.addDatastore('fast', fastDir);
  return agent;
}

interface MovedDisk {
  readonly paths: readonly CopyPath[];
  readonly writes: number;
  readonly events: readonly MigrationEvent[];
}

/**
 * Creates vm1 (thick, `dataBytes` of random data at its start), moves it to `fast` with `method`
 * while a guest writes, and checks every acknowledged write through the export and in the new
 * image, and that nothing is left at the source.
 */
async function moveWritten(
  agent: Agent,
  fastDir: string,
  method: MethodName,
  seed: number,
): Promise<MovedDisk> {
  const sizeBytes = 32 * MIB;
  await agent.createDisk({ name: 'vm1', sizeBytes, provisioning: 'thick' });
  const device = agent.exports.lookup('vm1')?.device as BlockDevice;
  assert.ok(device);
  const model = randomBytes(sizeBytes, prng(seed));
  await device.write(0, model);
  const events: MigrationEvent[] = [];
  let writesBeforeSwitchover = 0;
  let writes = 0;
  const writer = startWriter(device, model, seed + 1, () => {
    writes += 1;
  });
  const move = await agent.moveDisk(
    { name: 'vm1', datastore: 'fast', method, tuning: { downtimeTargetMs: 20 } },
    (event) => {
      if (event.type === 'phase' && event.phase === 'switchover') writesBeforeSwitchover = writes;
      events.push(event);
    },
  );
  await move.done;
  await writer.stop();
  assert.ok(writesBeforeSwitchover > 0, `seed ${seed}: the guest wrote while the copy ran`);
  assertSameBytes(await device.read(0, sizeBytes), model, `seed ${seed}: export after the move`);
  assertSameBytes(await readFile(join(fastDir, 'vm1.raw')), model, `seed ${seed}: new image`);
  const local = await readdir(join(agent.dataDir, 'datastores', 'local'));
  assert.deepEqual(
    local.filter((file) => !file.startsWith('.')),
    [],
    'the source image is gone',
  );
  const paths = events.flatMap((event) => (event.type === 'offload' ? [event.path] : []));
  return { paths, writes, events };
}

const EXPECTED_PATH: Record<FileSystemType, CopyPath> = {
  ext4: 'copy_file_range',
  xfs: 'reflink',
  btrfs: 'reflink',
};

for (const type of FILE_SYSTEM_TYPES) {
  for (const [index, method] of METHOD_NAMES.entries()) {
    test(`${type}: a ${method} move offloads the copy (${EXPECTED_PATH[type]}) and keeps every write`, async () => {
      const root = join(mountOf(type).path, `${method}`);
      const fastDir = join(root, 'fast');
      const agent = await openAgent('data', root, fastDir);
      try {
        const moved = await moveWritten(agent, fastDir, method, 100 + index);
        // The bulk copy went by the kernel's way for this file system. Only the snapshot
        // method's redo log (read into the destination at consolidation) goes through the agent.
        const expected: CopyPath[] = [EXPECTED_PATH[type]];
        if (method === 'snapshot') expected.push('read-write');
        assert.deepEqual(moved.paths, expected);
        const costs = moved.events.filter((event) => event.type === 'cost').map((e) => e.part);
        for (const part of [
          'destination image',
          'pre-flush',
          'destination descriptors',
          'source deletion',
        ]) {
          assert.ok(costs.includes(part), `the job reports ${part}: ${costs.join(', ')}`);
        }
        // Thick stays thick. Where the copy is reflinks, the destination is allocated after it
        // (allocating first would only have its blocks replaced), else at its creation.
        assert.equal(costs.includes('thick allocation'), EXPECTED_PATH[type] === 'reflink');
        const allocated = await statAllocatedBytes(join(fastDir, 'vm1.raw'));
        assert.ok(allocated >= 32 * MIB, `the thick destination holds ${allocated} bytes`);
      } finally {
        await agent.close();
      }
    });
  }
}

test('ext4 to XFS: the kernel will not copy across, so the agent reads and writes, and says so', async () => {
  const root = join(mountOf('ext4').path, 'across');
  const fastDir = join(mountOf('xfs').path, 'across-fast');
  const agent = await openAgent('data', root, fastDir);
  try {
    const moved = await moveWritten(agent, fastDir, 'mirror', 200);
    // Linux since 5.19 refuses copy_file_range between two file system types (EXDEV).
    assert.deepEqual(moved.paths, ['read-write']);
  } finally {
    await agent.close();
  }
});

test('a destination that fills up fails the move with ERR_TARGET_FAILED; the source serves every write', async () => {
  // Both datastores on one small file system, so the copy is offloaded when it runs out.
  const root = join(tiny.path, 'full');
  const fastDir = join(tiny.path, 'fast');
  const agent = await openAgent('data', root, fastDir);
  try {
    const sizeBytes = 96 * MIB;
    await agent.createDisk({ name: 'vm1', sizeBytes });
    const device = agent.exports.lookup('vm1')?.device as BlockDevice;
    assert.ok(device);
    // Its data fills more than half the 160 MiB file system: the thin copy runs out midway.
    const model = randomBytes(sizeBytes, prng(300));
    await device.write(0, model);
    const writer = startWriter(device, model, 301);
    const events: MigrationEvent[] = [];
    const move = await agent.moveDisk({ name: 'vm1', datastore: 'fast' }, (event) =>
      events.push(event),
    );
    await assert.rejects(move.done, (error: Error & { code?: string }) => {
      assert.equal(error.code, 'ERR_TARGET_FAILED', error.message);
      assert.match(error.message, /ENOSPC|no space/i);
      return true;
    });
    await writer.stop();
    assert.equal((await agent.getDisk('vm1')).datastore, 'local');
    assertSameBytes(await device.read(0, sizeBytes), model, 'the source after the failed move');
    assert.deepEqual(
      (await readdir(fastDir)).filter((file) => file !== 'lost+found'),
      [],
      'the partial copy is deleted',
    );
    assert.ok(events.some((event) => event.type === 'offload' && event.path === 'copy_file_range'));
  } finally {
    await agent.close();
  }
});

test('xfs: a thick disk with unwritten ranges moves by reflinks and is still wholly allocated after', async () => {
  const root = join(mountOf('xfs').path, 'thick-holes');
  const fastDir = join(root, 'fast');
  const agent = await openAgent('data', root, fastDir);
  try {
    const sizeBytes = 32 * MIB;
    await agent.createDisk({ name: 'vm1', sizeBytes, provisioning: 'thick' });
    const device = agent.exports.lookup('vm1')?.device as BlockDevice;
    const data = randomBytes(4 * MIB, prng(400));
    await device.write(8 * MIB, data);
    const events: MigrationEvent[] = [];
    const move = await agent.moveDisk({ name: 'vm1', datastore: 'fast' }, (event) =>
      events.push(event),
    );
    await move.done;
    assert.ok(events.some((event) => event.type === 'offload' && event.path === 'reflink'));
    assert.ok(events.some((event) => event.type === 'cost' && event.part === 'thick allocation'));
    // 28 MiB were never written: only the late allocation makes them blocks of the new image.
    const allocated = await statAllocatedBytes(join(fastDir, 'vm1.raw'));
    assert.ok(allocated >= sizeBytes, `the thick destination holds ${allocated} bytes`);
    const expected = Buffer.alloc(sizeBytes);
    data.copy(expected, 8 * MIB);
    assertSameBytes(await readFile(join(fastDir, 'vm1.raw')), expected, 'the new image');
  } finally {
    await agent.close();
  }
});
