/**
 * `kill -9` of `ferry serve` at each crash point for each method (issue 10: all 16 pairs, plus a
 * crash just after the guest resumes on the destination), with data, zeroes and trims among the
 * guest's recorded writes. After each restart the right copy serves every acknowledged write; an
 * uncommitted move is resumed by the restarted server as the same job, from its persisted copy
 * state. The cases are declared by the files that import this one, a share each, so that every
 * file stays within the per-file time limit.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CRASH_POINTS, type CrashPoint, RELEASE_CRASH_POINTS } from '../../src/host/disk-mover.js';
import { METHOD_NAMES, type MethodName } from '../../src/migrate/method.js';
import { NbdClient } from '../../src/nbd/index.js';
import { makeTempDir } from '../host/temp-dir.js';
import { assertSameBytes, prng, randomBytes } from '../migrate/harness.js';
import { RecordingWriter } from '../migrate/recording-writer.js';
import { MiB, toolTest } from '../nbd/interop-helpers.js';
import type { ServeProcess } from './ferry-process.js';
import { api, type Job, setUp, startWithFast, stop, waitJob } from './live-serve.js';

export interface CrashCase {
  readonly point: CrashPoint;
  readonly method: MethodName;
}

/** Every method at every crash point (issue 10), and just after the guest resumes on the destination. */
export const CRASH_CASES: ReadonlyArray<CrashCase> = [
  ...CRASH_POINTS,
  ...RELEASE_CRASH_POINTS,
].flatMap((point) => METHOD_NAMES.map((method) => ({ point, method })));

/** The points after which the destination is the disk. */
const COMMITTED_POINTS: readonly CrashPoint[] = ['after-commit', 'after-release'];

/** Declares one test per case: `kill -9` at the point, restart, check, resume. */
export function defineCrashTests(
  cases: ReadonlyArray<CrashCase>,
  options: { readonly isBitmapChecked?: boolean } = {},
): void {
  for (const { point, method } of cases) {
    toolTest(
      `kill -9 at ${point} (${method}): after restart the right copy serves every acknowledged write`,
      [],
      async () => {
        const dataDir = await makeTempDir();
        const sizeBytes = 16 * MiB;
        const crashing = await startWithFast(dataDir, { FERRY_CRASH_AT: point });
        const fast = await setUp(dataDir, crashing, sizeBytes);
        const client = await NbdClient.connect({
          exportName: 'vm1',
          host: '127.0.0.1',
          port: crashing.ready.nbdPort,
        });
        assert.notEqual(client.caps.trim, 'none', 'the export takes trims');
        // The whole disk holds data; the guest's working set is its second half. A region the
        // guest keeps writing stays under write intent and is copied again on resume (copy-state.ts),
        // so only the first half, which the copy reaches first, can show that the resume starts
        // from the persisted bitmap.
        const model = randomBytes(sizeBytes, prng(5));
        for (let offset = 0; offset < sizeBytes; offset += MiB) {
          await client.write(offset, model.subarray(offset, offset + MiB));
        }
        const writer = new RecordingWriter(client, model, { start: sizeBytes / 2, end: sizeBytes });
        writer.start(client, 17);
        await new Promise((resolve) => setTimeout(resolve, 200));
        const submitted = await api<Job>(crashing, 'POST', '/v1/migrations', {
          disk: 'vm1',
          datastore: 'fast',
          method,
          // At `copy` the agent dies half-way: slow enough that a checkpoint (every second) has
          // persisted part of the first half by then.
          speed: point === 'copy' ? 4 * MiB : 16 * MiB,
        });
        const code = await crashing.exited;
        assert.equal(code, null, 'the server was killed by a signal');
        await writer.stop();
        await client.close().catch(() => undefined);
        assert.ok(writer.writes > 0, 'the guest wrote before the crash');
        assert.ok(writer.zeroes > 0 && writer.trims > 0, 'zeroes and trims among the writes');

        const isCommitted = COMMITTED_POINTS.includes(point);
        const restarted = await startWithFast(dataDir);
        try {
          const reader = await NbdClient.connect({
            exportName: 'vm1',
            host: '127.0.0.1',
            port: restarted.ready.nbdPort,
          });
          const served = await reader.read(0, sizeBytes);
          const expected = writer.expectedFor(served);
          assertSameBytes(served, expected, 'export after restart');
          expected.copy(writer.model);
          if (isCommitted) {
            await reader.close();
            const disk = await api<{ datastore: string; image: string }>(
              restarted,
              'GET',
              '/v1/disks/vm1',
            );
            assert.equal(disk.datastore, 'fast');
            assertSameBytes(await readFile(disk.image), expected, 'image after restart');
            assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
            const leftovers = await readdir(join(dataDir, 'datastores', 'local'));
            assert.deepEqual(leftovers, [], 'the old copy is cleaned up');
          } else {
            // Not committed: the restarted server resumes the move from its persisted copy state,
            // as the same job, while the guest goes on writing (issue 10).
            writer.start(reader, 23);
            const job = await waitJob(restarted, submitted.id);
            await writer.stop();
            await reader.close();
            assert.equal(job.state, 'succeeded', JSON.stringify(job.error));
            await checkResumed(
              restarted,
              submitted.id,
              (options.isBitmapChecked ?? true) && point === 'copy',
            );
            const check = await NbdClient.connect({
              exportName: 'vm1',
              host: '127.0.0.1',
              port: restarted.ready.nbdPort,
            });
            const after = await check.read(0, sizeBytes);
            await check.close();
            assertSameBytes(after, writer.model, 'export after the resumed move');
            assertSameBytes(
              await readFile(join(fast, 'vm1.raw')),
              writer.model,
              'image after the resumed move',
            );
            assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
            assert.deepEqual(await readdir(join(dataDir, 'datastores', 'local')), []);
          }
        } finally {
          await stop(restarted);
        }
      },
    );
  }
}

/**
 * The job after the restart: the same job, its history from before the crash kept (ferry.db),
 * and, with `isFromBitmap`, resumed from the copy state the crashed agent persisted, not from zero.
 */
async function checkResumed(serve: ServeProcess, id: string, isFromBitmap: boolean): Promise<void> {
  const job = await api<Job & { events: { type: string; message: string }[] }>(
    serve,
    'GET',
    `/v1/jobs/${id}`,
  );
  const types = job.events.map((event) => event.type);
  assert.ok(types.includes('created'), `the history from before the crash: ${types.join(', ')}`);
  const resumed = job.events.find((event) => event.message.startsWith('resumed move'));
  assert.ok(resumed !== undefined, 'the job says it resumed');
  const copied = /: (\S+) of \S+ were already on the destination/.exec(resumed.message)?.[1];
  assert.ok(copied !== undefined, resumed.message);
  // Later crash points may come before the first checkpoint persisted the finished copy.
  if (isFromBitmap) assert.notEqual(copied, '0', `resumed from its bitmap: ${resumed.message}`);
}
