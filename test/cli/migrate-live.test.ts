/**
 * Live migration through the product: `ferry serve` as a child process, fio's nbd engine writing
 * with verify over real NBD while a migration started through the HTTP API runs; afterwards every
 * block verifies through the export and straight from the destination image. The crash tests
 * are in crash-cases.ts (migrate-crashes-*.test.ts).
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { makeTempDir } from '../host/temp-dir.js';
import { MiB, runOk, toolTest } from '../nbd/interop-helpers.js';
import { fioArgs as fioGuestArgs } from './fio-guest.js';
import { api, type Job, setUp, startWithFast, stop, waitJob } from './live-serve.js';

const FIO_SIZE = 48 * MiB;

function fioArgs(uri: string, extra: readonly string[]): string[] {
  return fioGuestArgs(uri, FIO_SIZE, extra);
}

for (const method of METHOD_NAMES) {
  toolTest(
    `live migration (${method}): fio writes and verifies through the move`,
    ['fio'],
    async () => {
      const dataDir = await makeTempDir();
      const serve = await startWithFast(dataDir);
      try {
        const fast = await setUp(dataDir, serve, FIO_SIZE);
        const uri = `nbd://127.0.0.1:${serve.ready.nbdPort}/vm1`;
        // About 4 s of writes; the migration starts while they run and ends well before.
        const fio = runOk('fio', fioArgs(uri, ['--rate_iops=3000', '--do_verify=1']), {
          timeoutMs: 60_000,
          cwd: dataDir,
        });
        await new Promise((resolve) => setTimeout(resolve, 700));
        const started = await api<Job>(serve, 'POST', '/v1/migrations', {
          disk: 'vm1',
          datastore: 'fast',
          method,
          speed: 24 * MiB,
        });
        const job = await waitJob(serve, started.id);
        assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
        assert.ok(job.downtimeMs !== null && job.downtimeMs < 1000, `downtime ${job.downtimeMs}`);
        await fio;
        const disk = await api<{ datastore: string }>(serve, 'GET', '/v1/disks/vm1');
        assert.equal(disk.datastore, 'fast');
        assert.deepEqual(
          (await readdir(join(dataDir, 'datastores', 'local'))).filter((f) => !f.startsWith('.')),
          [],
        );
        // Again through the export, and straight from the destination image.
        await runOk('fio', fioArgs(uri, ['--verify_only']), { timeoutMs: 60_000, cwd: dataDir });
        await stop(serve);
        await runOk('fio', fioArgs(join(fast, 'vm1.raw'), ['--verify_only']), {
          timeoutMs: 60_000,
          cwd: dataDir,
        });
      } finally {
        serve.child.kill('SIGKILL');
      }
    },
  );
}
