import assert from 'node:assert/strict';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { JobRecord } from '../../src/control/job-record.js';
import type { VmInfo } from '../../src/host/agent.js';
import { makeTempDir } from '../host/temp-dir.js';
import { runFerry, startServe } from './ferry-process.js';

test('cli: vm create, list, show, migrate --vm, rm against ferry serve', async () => {
  const dir = await makeTempDir();
  const dataDir = join(dir, 'data');
  const fast = join(dir, 'fast');
  await mkdir(fast);
  const serve = await startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  const env = { FERRY_API: serve.ready.apiUrl };
  const ok = async (args: string[]) => {
    const result = await runFerry(args, env);
    assert.equal(result.code, 0, `${args.join(' ')}: ${result.stderr}`);
    return result.stdout;
  };
  try {
    await ok(['datastore', 'add', 'fast', fast]);
    await ok(['disk', 'create', 'db-os', '--size', '2M']);
    await ok(['disk', 'create', 'db-data', '--size', '1M']);
    const created = await ok(['vm', 'create', 'db', '--disk', 'db-os', '--disk', 'db-data']);
    assert.match(created, /Created VM db in datastore local with disks db-os, db-data/);
    const unknownDisk = await runFerry(['vm', 'create', 'x', '--disk', 'nope'], env);
    assert.equal(unknownDisk.code, 1);
    assert.match(unknownDisk.stderr, /no disk named nope/);
    assert.equal((await runFerry(['vm', 'create', 'x'], env)).code, 2);

    const list = await ok(['vm', 'list']);
    assert.match(list, /db\s+stopped\s+local\s+512M\s+1\s+3M\s+db-os,db-data/);
    const listed = JSON.parse(await ok(['vm', 'ls', '--json'])) as VmInfo[];
    assert.deepEqual(
      listed.map((vm) => vm.name),
      ['db'],
    );
    assert.match(await ok(['vm', 'show', 'db']), /home:\s+.*local\/db/);

    const moved = JSON.parse(await ok(['migrate', 'db', '--vm', '--to', 'fast', '--json']));
    const job = moved as JobRecord;
    assert.equal(job.state, 'succeeded');
    assert.equal(job.vm, 'db');
    assert.deepEqual(job.disks, ['db-os', 'db-data']);
    const shown = JSON.parse(await ok(['vm', 'show', 'db', '--json'])) as VmInfo;
    assert.equal(shown.datastore, 'fast');
    assert.deepEqual((await readdir(fast)).sort(), [
      'db',
      'db-data.disk.json',
      'db-data.raw',
      'db-os.disk.json',
      'db-os.raw',
    ]);
    assert.match(await ok(['job', 'show', job.id]), /vm:\s+db: disks db-os, db-data/);

    const busy = await runFerry(['disk', 'rm', 'db-os'], env);
    assert.equal(busy.code, 1);
    assert.match(busy.stderr, /belongs to VM db/);
    assert.deepEqual(JSON.parse(await ok(['vm', 'rm', 'db', '--json'])), { removed: 'db' });
    assert.equal((await runFerry(['vm', 'show', 'db'], env)).code, 1);
    await ok(['disk', 'rm', 'db-os']);
  } finally {
    serve.child.kill('SIGTERM');
    assert.equal(await serve.exited, 0, serve.logLines.join('\n'));
  }
});
