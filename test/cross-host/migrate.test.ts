/**
 * Cross-host disk moves between two real hosts (issue 7, "Done means"): two network namespaces
 * joined by a veth, each running `ferry serve`, added to each other with one key file. Guests
 * write through host a's export during the move — fio with verify, and a writer of our own that
 * records what was acknowledged — and every write is checked afterwards through a's
 * pass-through export, b's export, and b's image file. Then the failures: a link cut mid-copy,
 * `kill -9` of the source at each crash point, and of the destination at its commit.
 */
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CRASH_POINTS, type CrashPoint } from '../../src/host/disk-mover.js';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { fioArgs } from '../cli/fio-guest.js';
import { createHostPair, type HostPair } from './netns.js';
import { netnsTest } from './netns-test.js';
import {
  checkAcknowledged,
  expectedAfter,
  type RecordingGuest,
  startRecordingGuest,
} from './recording-guest.js';
import { type ServedHost, type ServedPair, startServedPair } from './two-serves.js';

const MiB = 1024 * 1024;
const DISK_BYTES = 48 * MiB;

interface JobJson {
  readonly id: string;
  readonly state: string;
  readonly method: string;
  readonly downtimeMs: number | null;
  readonly error: { code: string; message: string } | null;
}

interface DiskJson {
  readonly host: string | null;
  readonly datastore: string;
  readonly image: string;
  readonly generation: number;
}

async function withServedPair(
  body: (served: ServedPair, pair: HostPair) => Promise<void>,
  env: { a?: Record<string, string>; b?: Record<string, string> } = {},
): Promise<void> {
  const pair = await createHostPair();
  try {
    await body(await startServedPair(pair, env), pair);
  } finally {
    await pair.dispose();
  }
}

async function diskOn(host: ServedHost, name: string): Promise<DiskJson> {
  return JSON.parse(await host.ferryOk(['disk', 'show', name, '--json'])) as DiskJson;
}

/** fio in `host` against `target`; throws with fio's output unless it exits 0. */
async function fio(host: ServedHost, target: string, extra: readonly string[]): Promise<void> {
  const result = await host.host.exec('fio', fioArgs(target, DISK_BYTES, extra), {
    timeoutMs: 120_000,
    cwd: host.dataDir,
  });
  assert.equal(
    result.code,
    0,
    `fio ${extra.join(' ')} on ${host.name}:\n${result.stdout}\n${result.stderr}`,
  );
}

/** Reads a disk whole through `host`'s export, from inside that host. */
async function readExport(host: ServedHost, name: string): Promise<Buffer> {
  const file = join(host.dataDir, `read-${name}.raw`);
  const result = await host.host.exec('qemu-img', [
    'convert',
    '-f',
    'raw',
    '-O',
    'raw',
    `nbd://127.0.0.1:${host.nbdPort()}/${name}`,
    file,
  ]);
  assert.equal(result.code, 0, result.stderr);
  return readFile(file);
}

/**
 * Creates vm1 on `a` full of one pattern, so the copy has all of it to carry (a thin disk never
 * written copies in no time), and returns what it holds.
 */
async function createFilledDisk(a: ServedHost): Promise<Buffer> {
  await a.ferryOk(['disk', 'create', 'vm1', '--size', String(DISK_BYTES)]);
  const uri = `nbd://127.0.0.1:${a.nbdPort()}/vm1`;
  const result = await a.host.exec('qemu-io', [
    '-f',
    'raw',
    '-c',
    `write -P 0x11 0 ${DISK_BYTES}`,
    uri,
  ]);
  assert.equal(result.code, 0, result.stderr);
  return Buffer.alloc(DISK_BYTES, 0x11);
}

/**
 * A filled vm1 on `a`, the recording guest (seeded `seed`) writing to it, and a slow move to b
 * (8 MiB/s, so a test can strike while it copies); returns once the job runs.
 */
async function startSlowMove(
  a: ServedHost,
  seed: number,
): Promise<{ initial: Buffer; guest: RecordingGuest; jobId: string }> {
  const initial = await createFilledDisk(a);
  const guest = startRecordingGuest(a.host, { port: a.nbdPort(), exportName: 'vm1' }, seed);
  const args = ['migrate', 'vm1', '--to-host', 'b', '--speed', '8M', '--detach', '--json'];
  const started = JSON.parse(await a.ferryOk(args)) as JobJson;
  return { initial, guest, jobId: started.id };
}

/** Follows job `id` on `a` to its end (the watch exits 1 for a failed job: its JSON is read). */
async function watchJob(a: ServedHost, id: string): Promise<JobJson> {
  const watched = await a.ferry(['job', 'watch', id, '--json'], 120_000);
  return JSON.parse(watched.stdout) as JobJson;
}

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

const SOURCE_CRASHES: readonly CrashPoint[] = CRASH_POINTS;

for (const point of SOURCE_CRASHES) {
  netnsTest(
    `cross-host: kill -9 of the source at ${point}; after restart exactly one copy is writable and holds every acknowledged write`,
    { tools: ['qemu-img', 'qemu-io'], timeoutMs: 180_000 },
    async () => {
      await withServedPair(
        async ({ a, b }) => {
          const initial = await createFilledDisk(a);
          const guest = startRecordingGuest(a.host, { port: a.nbdPort(), exportName: 'vm1' }, 31);
          await new Promise((resolve) => setTimeout(resolve, 200));
          await a.ferry(['migrate', 'vm1', '--to-host', 'b', '--speed', '32M', '--json']);
          assert.equal(await a.serve.exited, null, 'a was killed by a signal');
          await guest.ended;
          const acked = guest.acked();
          assert.ok(acked > 0, 'the guest wrote before the crash');
          await a.restart();
          const disk = await diskOn(a, 'vm1');
          const isCommitted = point === 'after-commit';
          assert.equal(disk.host, isCommitted ? 'b' : null);
          const expected = expectedAfter(initial, 31, acked);
          checkAcknowledged(await readExport(a, 'vm1'), expected, "a's export");
          if (isCommitted) {
            checkAcknowledged(await readExport(b, 'vm1'), expected, "b's export");
          } else {
            await assert.rejects(diskOn(b, 'vm1'), 'b must not serve an uncommitted copy');
          }
          assert.deepEqual(await readdir(join(a.dataDir, 'journal')), []);
        },
        { a: { FERRY_CRASH_AT: point } },
      );
    },
  );
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
