import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { statAllocatedBytes } from '../../src/block/raw-file.js';
import { Datastore } from '../../src/host/datastore.js';
import { makeTempDir } from './temp-dir.js';

const MIB = 1024 * 1024;

async function newDatastore(): Promise<Datastore> {
  return new Datastore('ds', await makeTempDir());
}

test('datastore: create lays out descriptor and image, scan lists it', async () => {
  const datastore = await newDatastore();
  const descriptor = await datastore.createDisk('vm1', 4 * MIB, 'thin');
  assert.equal(descriptor.generation, 1);
  assert.equal(descriptor.image, 'vm1.raw');
  assert.deepEqual((await readdir(datastore.path)).sort(), ['vm1.disk.json', 'vm1.raw']);
  assert.equal((await stat(join(datastore.path, 'vm1.raw'))).size, 4 * MIB);
  const scan = await datastore.scan();
  assert.deepEqual(scan.descriptors, [descriptor]);
  assert.deepEqual(scan.problems, []);
});

test('datastore: thin images are sparse, thick images are allocated', async () => {
  const datastore = await newDatastore();
  const thin = await datastore.createDisk('thin1', 8 * MIB, 'thin');
  const thick = await datastore.createDisk('thick1', 8 * MIB, 'thick');
  assert.ok((await statAllocatedBytes(datastore.imagePath(thin))) < MIB);
  assert.ok((await statAllocatedBytes(datastore.imagePath(thick))) >= 8 * MIB);
});

test('datastore: refuses a taken name, a bad name and a bad size', async () => {
  const datastore = await newDatastore();
  await datastore.createDisk('vm1', MIB, 'thin');
  await assert.rejects(datastore.createDisk('vm1', MIB, 'thin'), { code: 'ERR_EXISTS' });
  await assert.rejects(datastore.createDisk('.x', MIB, 'thin'), { code: 'ERR_BAD_NAME' });
  await assert.rejects(datastore.createDisk('vm2', 0, 'thin'), { code: 'ERR_BAD_SIZE' });
  await assert.rejects(datastore.createDisk('vm2', 1000, 'thin'), { code: 'ERR_BAD_SIZE' });
  assert.deepEqual((await readdir(datastore.path)).sort(), ['vm1.disk.json', 'vm1.raw']);
});

test('datastore: remove deletes descriptor and image', async () => {
  const datastore = await newDatastore();
  const descriptor = await datastore.createDisk('vm1', MIB, 'thin');
  assert.equal(await datastore.removeDisk(descriptor), undefined);
  assert.deepEqual(await readdir(datastore.path), []);
});

test('datastore: scan reports corrupt descriptors and orphan images, skips temporaries', async () => {
  const datastore = await newDatastore();
  await datastore.createDisk('good', MIB, 'thin');
  await writeFile(join(datastore.path, 'bad.disk.json'), '{"version": 1');
  await writeFile(join(datastore.path, 'orphan.raw'), Buffer.alloc(512));
  await writeFile(join(datastore.path, '.good.disk.json.tmp-1-ab'), 'partial');
  const scan = await datastore.scan();
  assert.deepEqual(
    scan.descriptors.map((d) => d.name),
    ['good'],
  );
  assert.deepEqual(
    scan.problems.map((p) => [p.code, p.file]),
    [
      ['ERR_BAD_DESCRIPTOR', join(datastore.path, 'bad.disk.json')],
      ['ERR_ORPHAN_IMAGE', join(datastore.path, 'orphan.raw')],
    ],
  );
  assert.match(scan.problems[1]?.message ?? '', /ferry disk import NAME/);
});

test('datastore: create over an orphan image is refused with a way out', async () => {
  const datastore = await newDatastore();
  await writeFile(join(datastore.path, 'vm1.raw'), Buffer.alloc(512));
  await assert.rejects(
    datastore.createDisk('vm1', MIB, 'thin'),
    (error: Error & { code?: string }) => {
      assert.equal(error.code, 'ERR_EXISTS');
      assert.match(error.message, /ferry disk import vm1/);
      return true;
    },
  );
});

test('datastore: import moves the file in; size and provisioning come from the file', async () => {
  const datastore = await newDatastore();
  const outside = await makeTempDir();
  const sparse = join(outside, 'sparse.img');
  await writeFile(sparse, '');
  await truncate(sparse, 16 * MIB);
  const thin = await datastore.importImage('thinvm', sparse);
  assert.equal(thin.sizeBytes, 16 * MIB);
  assert.equal(thin.provisioning, 'thin');
  await assert.rejects(stat(sparse), { code: 'ENOENT' });
  assert.equal((await stat(datastore.imagePath(thin))).size, 16 * MIB);

  const full = join(outside, 'full.img');
  await writeFile(full, Buffer.alloc(MIB, 1));
  const thick = await datastore.importImage('thickvm', full);
  assert.equal(thick.provisioning, 'thick');
  assert.equal(thick.sizeBytes, MIB);
});

test('datastore: import adopts an orphan image in place', async () => {
  const datastore = await newDatastore();
  const orphan = join(datastore.path, 'vm1.raw');
  await writeFile(orphan, Buffer.alloc(4096, 7));
  const descriptor = await datastore.importImage('vm1', orphan);
  assert.equal(descriptor.image, 'vm1.raw');
  assert.deepEqual((await datastore.scan()).problems, []);
});

test('datastore: import refuses relative, missing, non-regular, empty and taken', async () => {
  const datastore = await newDatastore();
  const outside = await makeTempDir();
  await assert.rejects(datastore.importImage('a', 'relative.img'), { code: 'ERR_BAD_PATH' });
  await assert.rejects(datastore.importImage('a', join(outside, 'absent.img')), {
    code: 'ERR_BAD_PATH',
  });
  await assert.rejects(datastore.importImage('a', outside), { code: 'ERR_BAD_PATH' });
  const empty = join(outside, 'empty.img');
  await writeFile(empty, '');
  await assert.rejects(datastore.importImage('a', empty), { code: 'ERR_BAD_SIZE' });
  await datastore.createDisk('taken', MIB, 'thin');
  const file = join(outside, 'x.img');
  await writeFile(file, Buffer.alloc(512));
  await assert.rejects(datastore.importImage('taken', file), { code: 'ERR_EXISTS' });
  await stat(file);
});

test('datastore: import from another file system is refused, the file stays', async (t) => {
  const datastore = await newDatastore();
  const shm = '/dev/shm';
  const here = await stat(datastore.path);
  const there = await stat(shm).catch(() => undefined);
  if (!there || there.dev === here.dev) {
    t.skip('needs /dev/shm on a file system other than the temp dir');
    return;
  }
  const dir = await mkdtemp(join(shm, 'ferry-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, 'img.raw');
  await writeFile(file, Buffer.alloc(4096));
  await assert.rejects(datastore.importImage('vm1', file), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_CROSS_DEVICE');
    assert.match(error.message, /cp --sparse=always/);
    return true;
  });
  await stat(file);
  assert.deepEqual(await readdir(datastore.path), []);
});

test('datastore: space comes from statfs, unavailable directory is a clear error', async () => {
  const datastore = await newDatastore();
  const space = await datastore.space();
  assert.ok(
    space.capacityBytes > 0 && space.freeBytes > 0 && space.freeBytes <= space.capacityBytes,
  );
  const gone = new Datastore('gone', join(datastore.path, 'not-there'));
  await assert.rejects(gone.scan(), { code: 'ERR_DATASTORE_UNAVAILABLE' });
  await assert.rejects(gone.space(), { code: 'ERR_DATASTORE_UNAVAILABLE' });
});

test('datastore: an image removed in the background is no disk at once, gone once settled, and remains a crash left are swept by the scan', async () => {
  const datastore = await newDatastore();
  const descriptor = await datastore.createDisk('vm1', 64 * MIB, 'thick');
  assert.equal(await datastore.removeDisk(descriptor, { isImageInBackground: true }), undefined);
  const right = await readdir(datastore.path);
  assert.ok(!right.includes('vm1.raw') && !right.includes('vm1.disk.json'), right.join(', '));
  assert.deepEqual((await datastore.scan()).problems, [], 'the remains are not an orphan image');
  await datastore.settle();
  assert.deepEqual(await readdir(datastore.path), []);
  // A crash between the rename and the unlink: the next scan deletes what is left.
  await writeFile(join(datastore.path, '.vm2.raw.removed-1234'), 'old bytes');
  await datastore.scan();
  await datastore.settle();
  assert.deepEqual(await readdir(datastore.path), []);
});
