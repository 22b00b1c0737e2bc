/**
 * Cross-host disk moves when an agent dies (issue 7, "Done means"): `kill -9` of the source at
 * each crash point, and of the destination at its commit and mid-copy; after each restart
 * exactly one copy is the disk and it holds every acknowledged write. A source killed before it
 * asked for the commit resumes the move from its copy state once it is back (issue 10). Split from
 * migrate.test.ts so each file stays well within the per-file time limit.
 */
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CRASH_POINTS, type CrashPoint } from '../../src/host/disk-mover.js';
import { assertSameBytes } from '../migrate/harness.js';
import { netnsTest } from './netns-test.js';
import { checkAcknowledged, expectedAfter, startRecordingGuest } from './recording-guest.js';
import {
  createFilledDisk,
  diskOn,
  type JobJson,
  readExport,
  startSlowMove,
  watchJob,
  withServedPair,
} from './served-pair.js';
import type { ServedHost } from './two-serves.js';

const SOURCE_CRASHES: readonly CrashPoint[] = CRASH_POINTS;

for (const point of SOURCE_CRASHES) {
  netnsTest(
    `cross-host: kill -9 of the source at ${point}; after restart every acknowledged write is kept and the move ends on b`,
    { tools: ['qemu-img', 'qemu-io'], timeoutMs: 180_000 },
    async () => {
      await withServedPair(
        async ({ a, b }) => {
          // At `copy` the source dies half-way once a checkpoint (every 5 s across hosts) has
          // persisted part of the copy: slow enough that one has.
          const speed = point === 'copy' ? '4M' : '32M';
          const { initial, acked } = await moveUntilSourceDies(a, 31, speed);
          await a.restart();
          const expected = expectedAfter(initial, 31, acked);
          // Whatever the point, a serves every acknowledged write at once: the source itself
          // while the move resumes, or the pass-through to b once it had committed.
          checkAcknowledged(await readExport(a, 'vm1'), expected, "a's export after restart");
          if (point !== 'after-commit') {
            // Not committed, and b still has its copy: the restarted source resumes the move
            // from its copy state (issue 10), as the same job.
            const [job] = JSON.parse(await a.ferryOk(['job', 'list', '--json'])) as JobJson[];
            assert.ok(job !== undefined, 'the job is still known after the restart');
            const done = await watchJob(a, job.id);
            assert.equal(done.state, 'succeeded', JSON.stringify(done.error));
            await checkResumedFromBitmap(a, job.id, point === 'copy');
          }
          assert.equal((await diskOn(a, 'vm1')).host, 'b');
          const moved = await readExport(b, 'vm1');
          checkAcknowledged(moved, expected, "b's export");
          assertSameBytes(await readExport(a, 'vm1'), moved, "a's pass-through");
          assert.deepEqual(await readdir(join(a.dataDir, 'journal')), []);
        },
        { a: { FERRY_CRASH_AT: point } },
      );
    },
  );
}

/**
 * A filled vm1 on `a`, the recording guest (seeded `seed`) writing to it, and a move to b that
 * `FERRY_CRASH_AT` kills `a` in; returns what vm1 held and how many writes were acknowledged.
 */
async function moveUntilSourceDies(
  a: ServedHost,
  seed: number,
  speed = '32M',
): Promise<{ initial: Buffer; acked: number }> {
  const initial = await createFilledDisk(a);
  const guest = startRecordingGuest(a.host, { port: a.nbdPort(), exportName: 'vm1' }, seed);
  await new Promise((resolve) => setTimeout(resolve, 200));
  await a.ferry(['migrate', 'vm1', '--to-host', 'b', '--speed', speed, '--json']);
  assert.equal(await a.serve.exited, null, 'a was killed by a signal');
  await guest.ended;
  const acked = guest.acked();
  assert.ok(acked > 0, 'the guest wrote before the crash');
  return { initial, acked };
}

/**
 * The resumed job says how much was already on b; at `copy` (killed half-way, after a checkpoint
 * persisted part of the copy) that is more than nothing.
 */
async function checkResumedFromBitmap(a: ServedHost, id: string, isFromBitmap: boolean) {
  const record = JSON.parse(await a.ferryOk(['job', 'show', id, '--json'])) as {
    events: { message: string }[];
  };
  const resumed = record.events.find((event) => event.message.startsWith('resumed move'));
  assert.ok(resumed !== undefined, `the job says it resumed: ${JSON.stringify(record.events)}`);
  const copied = /: (\S+) of \S+ were already on the destination/.exec(resumed.message)?.[1];
  assert.ok(copied !== undefined, resumed.message);
  if (isFromBitmap) assert.notEqual(copied, '0', `resumed from its bitmap: ${resumed.message}`);
}

netnsTest(
  'cross-host: kill -9 of the destination at its commit; the source holds the guest, asks again, and finishes',
  { tools: ['qemu-img', 'qemu-io'], timeoutMs: 180_000 },
  async () => {
    await withServedPair(
      async ({ a, b }) => {
        const initial = await createFilledDisk(a);
        const guest = startRecordingGuest(a.host, { port: a.nbdPort(), exportName: 'vm1' }, 41);
        const started = JSON.parse(
          await a.ferryOk([
            'migrate',
            'vm1',
            '--to-host',
            'b',
            '--speed',
            '32M',
            '--detach',
            '--json',
          ]),
        ) as JobJson;
        assert.equal(await b.serve.exited, null, 'b was killed at its commit');
        // a cannot know whether b committed: the guest is held, a keeps asking. b comes back.
        const heldAt = guest.acked();
        await new Promise((resolve) => setTimeout(resolve, 1000));
        assert.equal(guest.acked(), heldAt, 'guest I/O is held while the outcome is unknown');
        await b.restart();
        const job = JSON.parse(
          await a.ferryOk(['job', 'watch', started.id, '--json'], 120_000),
        ) as JobJson;
        assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
        const acked = await guest.stop();
        assert.equal((await diskOn(a, 'vm1')).host, 'b');
        const expected = expectedAfter(initial, 41, acked);
        checkAcknowledged(await readExport(b, 'vm1'), expected, "b's export");
        checkAcknowledged(await readExport(a, 'vm1'), expected, "a's pass-through");
      },
      { b: { FERRY_CRASH_AT: 'receive-commit' } },
    );
  },
);

netnsTest(
  'cross-host: kill -9 of the destination mid-copy fails the move; the guest keeps every write on a; b drops its copy at restart',
  { tools: ['qemu-img', 'qemu-io'], timeoutMs: 180_000 },
  async () => {
    await withServedPair(async ({ a, b }) => {
      const { initial, guest, jobId } = await startSlowMove(a, 51);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      await b.serve.kill('SIGKILL');
      const job = await watchJob(a, jobId);
      assert.equal(job.state, 'failed');
      const acked = await guest.stop();
      assert.ok(acked > 0, 'the guest wrote');
      assert.equal((await diskOn(a, 'vm1')).host, null, 'vm1 stays on a');
      checkAcknowledged(
        await readExport(a, 'vm1'),
        expectedAfter(initial, 51, acked),
        "a's export",
      );
      await b.restart();
      await assert.rejects(diskOn(b, 'vm1'), 'b must not serve the partial copy');
      const left = await readdir(join(b.dataDir, 'datastores', 'local'));
      assert.deepEqual(
        left.filter((file) => !file.startsWith('.')),
        [],
        'b deleted its partial copy',
      );
    });
  },
);

netnsTest(
  'cross-host: kill -9 of the source mid-copy, and b restarts before it is back: the move rolls back and a keeps every write',
  { tools: ['qemu-img', 'qemu-io'], timeoutMs: 180_000 },
  async () => {
    await withServedPair(
      async ({ a, b }) => {
        const { initial, acked } = await moveUntilSourceDies(a, 61);
        // b restarts meanwhile and drops the copy it had not committed: nothing to resume onto.
        await b.serve.kill('SIGKILL');
        await b.restart();
        await a.restart();
        const [job] = JSON.parse(await a.ferryOk(['job', 'list', '--json'])) as JobJson[];
        assert.ok(job !== undefined);
        const ended = await watchJob(a, job.id);
        assert.equal(ended.state, 'failed');
        assert.equal(ended.error?.code, 'ERR_JOB_INTERRUPTED');
        assert.equal((await diskOn(a, 'vm1')).host, null, 'vm1 stays on a');
        checkAcknowledged(
          await readExport(a, 'vm1'),
          expectedAfter(initial, 61, acked),
          "a's export",
        );
        await assert.rejects(diskOn(b, 'vm1'), 'b must not serve the partial copy');
        assert.deepEqual(await readdir(join(a.dataDir, 'journal')), []);
      },
      { a: { FERRY_CRASH_AT: 'copy' } },
    );
  },
);
