import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  type DiskDescriptor,
  parseDescriptor,
  readDescriptor,
  writeDescriptor,
} from '../../src/host/descriptor.js';
import { makeTempDir } from './temp-dir.js';

const good: DiskDescriptor = {
  version: 1,
  name: 'vm1',
  sizeBytes: 1024 * 1024,
  format: 'raw',
  provisioning: 'thin',
  generation: 1,
  image: 'vm1.raw',
  createdAt: '2025-01-01T00:00:00.000Z',
};

test('descriptor: write then read gives the same descriptor', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'vm1.disk.json');
  await writeDescriptor(path, good);
  assert.deepEqual(await readDescriptor(path, 'vm1'), good);
});

test('descriptor: each bad field is refused with the file named', () => {
  const cases: [string, Record<string, unknown>][] = [
    ['version', { version: 2 }],
    ['name', { name: '../x' }],
    ['sizeBytes', { sizeBytes: -1 }],
    ['sizeBytes', { sizeBytes: '10G' }],
    ['format', { format: 'qcow2' }],
    ['provisioning', { provisioning: 'lazy' }],
    ['generation', { generation: 0 }],
    ['image', { image: '../../etc/passwd' }],
    ['image', { image: '.hidden' }],
    ['createdAt', { createdAt: 'yesterday' }],
  ];
  for (const [field, change] of cases) {
    assert.throws(
      () => parseDescriptor({ ...good, ...change }, '/ds/vm1.disk.json'),
      (error: Error & { code?: string }) => {
        assert.equal(error.code, 'ERR_BAD_DESCRIPTOR', field);
        assert.ok(error.message.includes('/ds/vm1.disk.json'), error.message);
        assert.ok(error.message.includes(field === 'format' ? 'format' : field), error.message);
        return true;
      },
    );
  }
  assert.throws(() => parseDescriptor([good], 'f'), /not a JSON object/);
});

test('descriptor: a descriptor whose name differs from its file is refused', () => {
  assert.throws(() => parseDescriptor(good, '/ds/vm2.disk.json', 'vm2'), /names disk "vm1"/);
});

test('descriptor: truncated JSON is a clear error naming the file', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'vm1.disk.json');
  await writeFile(path, JSON.stringify(good).slice(0, 40));
  await assert.rejects(readDescriptor(path), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_BAD_DESCRIPTOR');
    assert.ok(error.message.includes(path));
    return true;
  });
});
