import assert from 'node:assert/strict';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  isTemporaryName,
  readJson,
  writeFileAtomic,
  writeJsonAtomic,
} from '../../src/host/atomic-file.js';
import { makeTempDir } from './temp-dir.js';

test('atomic file: replaces the contents and leaves no temporary behind', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'a.json');
  await writeFile(path, 'old');
  await writeFileAtomic(path, 'new');
  assert.equal(await readFile(path, 'utf8'), 'new');
  assert.deepEqual(await readdir(dir), ['a.json']);
});

test('atomic file: JSON round trip', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'b.json');
  await writeJsonAtomic(path, { version: 1, list: [1, 2] });
  assert.deepEqual(await readJson(path), { version: 1, list: [1, 2] });
  assert.match(await readFile(path, 'utf8'), /\n$/);
});

test('atomic file: a failed write leaves the target and no temporary', async () => {
  const dir = await makeTempDir();
  await assert.rejects(writeFileAtomic(join(dir, 'missing-dir', 'c.json'), 'x'), {
    code: 'ENOENT',
  });
  assert.deepEqual(await readdir(dir), []);
});

test('atomic file: readJson keeps fs errors and names the file for bad JSON', async () => {
  const dir = await makeTempDir();
  await assert.rejects(readJson(join(dir, 'absent.json')), { code: 'ENOENT' });
  const broken = join(dir, 'broken.json');
  await writeFile(broken, '{"version": 1,');
  await assert.rejects(readJson(broken), (error: Error & { code?: string }) => {
    assert.equal(error.code, 'ERR_BAD_DESCRIPTOR');
    assert.ok(error.message.includes(broken));
    return true;
  });
});

test('atomic file: temporaries are recognisable and never valid names', () => {
  assert.equal(isTemporaryName('.vm1.disk.json.tmp-123-abcd'), true);
  assert.equal(isTemporaryName('vm1.disk.json'), false);
});
