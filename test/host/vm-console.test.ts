import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { endConsoleLine } from '../../src/host/vm-runtime.js';
import { makeTempDir } from './temp-dir.js';

test('a fresh boot starts its console on a new line when the last QEMU was cut mid-line', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'console.log');
  await endConsoleLine(path);
  await assert.rejects(readFile(path), { code: 'ENOENT' }, 'no console yet: nothing is created');
  await writeFile(path, '');
  await endConsoleLine(path);
  assert.equal(await readFile(path, 'utf8'), '', 'an empty console stays empty');
  await writeFile(path, 'ack 1 0\nack 2 1\n');
  await endConsoleLine(path);
  assert.equal(await readFile(path, 'utf8'), 'ack 1 0\nack 2 1\n', 'a whole last line is kept');
  await writeFile(path, 'ack 1 0\nack 2');
  await endConsoleLine(path);
  assert.equal(await readFile(path, 'utf8'), 'ack 1 0\nack 2\n', 'a cut line is ended, not lost');
});
