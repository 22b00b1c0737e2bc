import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { CommitMark } from '../../src/host/commit-mark.js';
import { MoveJournal } from '../../src/host/move-journal.js';
import { makeTempDir } from './temp-dir.js';

test('commit mark: unset when created, set after set(), and only for its own move', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'm1.commit');
  const mark = await CommitMark.create(path, 'm1');
  try {
    assert.equal(await CommitMark.isSet(path, 'm1'), false);
    assert.equal((await readFile(path)).length, 4096, 'allocated before the commit');
    await mark.set();
    assert.equal(await CommitMark.isSet(path, 'm1'), true);
    assert.equal(await CommitMark.isSet(path, 'm2'), false, 'another move id');
    assert.equal(await CommitMark.isSet(join(dir, 'absent.commit'), 'm1'), false);
  } finally {
    await mark.close();
  }
  await assert.rejects(CommitMark.create(path, 'm1'), { code: 'EEXIST' });
});

test('commit mark: a sector that is not exactly the mark (torn, foreign) reads as not committed', async () => {
  const dir = await makeTempDir();
  const path = join(dir, 'm1.commit');
  const mark = await CommitMark.create(path, 'm1');
  await mark.set();
  await mark.close();
  const torn = await readFile(path);
  torn.fill(0, 16, 512); // the header written, the id not
  await writeFile(path, torn);
  assert.equal(await CommitMark.isSet(path, 'm1'), false);
});

test('move journal: a set commit mark reads as committed: true; removing the record removes the mark', async () => {
  const dataDir = await makeTempDir();
  const journal = await MoveJournal.open(dataDir);
  const record = {
    version: 2 as const,
    id: 'move-1',
    vm: null,
    homeFrom: null,
    to: 'fast',
    disks: [
      {
        disk: 'vm1',
        from: 'local',
        generation: 1,
        sourceImage: 'vm1.raw',
        image: 'vm1.raw',
        redoLogs: [],
      },
    ],
    committed: false,
    method: 'mirror',
    startedAt: new Date().toISOString(),
  };
  await journal.write(record);
  const mark = await journal.createCommitMark(record.id);
  assert.equal((await journal.list()).records[0]?.committed, false);
  await mark.set();
  await mark.close();
  assert.equal((await journal.list()).records[0]?.committed, true);
  await journal.remove(record.id);
  assert.deepEqual((await journal.list()).records, []);
  await assert.rejects(readFile(join(dataDir, 'journal', 'move-1.commit')), { code: 'ENOENT' });
});
