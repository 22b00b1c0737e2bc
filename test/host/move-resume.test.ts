/**
 * A local disk move that `kill -9` interrupted half-way through its copy resumes from its
 * persisted copy state (issue 10): `ferry serve` as a child process dies at FERRY_CRASH_AT=copy
 * while a guest writes (data, zeroes and trims) over NBD; the data dir is then opened in-process,
 * where the move is offered with part of the disk already copied; the guest writes on (also to
 * copied regions, which the write-intent filter must send to the resumed copy); the move resumes
 * and copies less than the disk; the result holds every acknowledged write.
 */
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Agent } from '../../src/host/agent.js';
import { METHOD_NAMES, type MethodName } from '../../src/migrate/method.js';
import type { MigrationEvent } from '../../src/migrate/migration.js';
import { NbdClient } from '../../src/nbd/index.js';
import { startServe } from '../cli/ferry-process.js';
import { api } from '../cli/live-serve.js';
import { assertSameBytes, prng, randomBytes } from '../migrate/harness.js';
import { RecordingWriter } from '../migrate/recording-writer.js';
import { MiB, toolTest } from '../nbd/interop-helpers.js';
import { makeTempDir } from './temp-dir.js';

const SIZE_BYTES = 32 * MiB;
/** The guest's working set: a quarter of the disk, as a real guest's hot area. */
const HOT_BYTES = 4 * MiB;

/** Until the crash: a served disk full of data, a guest writing, a move killed half-way. */
async function crashHalfWay(dataDir: string, method: MethodName): Promise<RecordingWriter> {
  const serve = await startServe(
    ['--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'],
    { FERRY_CRASH_AT: 'copy' },
  );
  try {
    const fast = join(dataDir, 'fast');
    await mkdir(fast, { recursive: true });
    await api(serve, 'POST', '/v1/datastores', { name: 'fast', path: fast });
    await api(serve, 'POST', '/v1/disks', { name: 'vm1', size: SIZE_BYTES });
    const client = await NbdClient.connect({
      exportName: 'vm1',
      host: '127.0.0.1',
      port: serve.ready.nbdPort,
    });
    // Data everywhere, so the copy moves bytes rather than skipping holes.
    const model = randomBytes(SIZE_BYTES, prng(3));
    for (let at = 0; at < SIZE_BYTES; at += MiB)
      await client.write(at, model.subarray(at, at + MiB));
    const writer = new RecordingWriter(client, model, { start: 0, end: HOT_BYTES });
    writer.start(client, 11);
    await api(serve, 'POST', '/v1/migrations', {
      disk: 'vm1',
      datastore: 'fast',
      method,
      speed: 8 * MiB,
    });
    assert.equal(await serve.exited, null, 'the server was killed by a signal');
    await writer.stop();
    await client.close().catch(() => undefined);
    assert.ok(writer.mutations > 0, 'the guest wrote before the crash');
    return writer;
  } finally {
    serve.child.kill('SIGKILL');
  }
}

/** The first 64 KiB granule at or after `from` that the persisted state calls copied. */
async function firstCopiedGranule(dataDir: string, id: string, from: number): Promise<number> {
  const file = JSON.parse(await readFile(join(dataDir, 'journal', `${id}.bitmap`), 'utf8')) as {
    disks: Array<{ savedGranuleBytes: number; copied: string }>;
  };
  const [disk] = file.disks;
  assert.ok(disk !== undefined);
  const bits = Buffer.from(disk.copied, 'base64');
  for (let granule = from / disk.savedGranuleBytes; granule < bits.length * 8; granule += 1) {
    if (((bits[granule >> 3] ?? 0) >> (granule & 7)) & 1) return granule * disk.savedGranuleBytes;
  }
  assert.fail("no granule past the guest's working set was copied before the crash");
}

for (const method of METHOD_NAMES) {
  toolTest(
    `resume after kill -9 in the copy (${method}): the move goes on from its bitmap and keeps every acknowledged write`,
    [],
    async () => {
      const dataDir = await makeTempDir();
      const writer = await crashHalfWay(dataDir, method);
      const agent = await Agent.open({ dataDir });
      try {
        const device = agent.exports.lookup('vm1')?.device;
        assert.ok(device);
        // The one mutation the crash left unknown is settled by what the source holds now.
        writer.model.set(writer.expectedFor(await device.read(0, SIZE_BYTES)));
        writer.pending = undefined;
        const [offered, ...others] = agent.resumableMoves();
        assert.ok(offered !== undefined && others.length === 0, 'one move is offered');
        assert.equal(offered.disk, 'vm1');
        assert.equal(offered.method, method);
        assert.equal(offered.sizeBytes, SIZE_BYTES);
        assert.ok(offered.copiedBytes > 0, `copied before the crash: ${offered.copiedBytes}`);
        assert.equal((await agent.getDisk('vm1')).datastore, 'local');
        // While offered, writes to a region the state calls copied must still reach the copy.
        const copied = await firstCopiedGranule(dataDir, offered.id, HOT_BYTES);
        const late = randomBytes(32 * 1024, prng(5));
        await device.write(copied, late);
        late.copy(writer.model, copied);
        await device.writeZeroes(copied + 32 * 1024, 32 * 1024);
        writer.model.fill(0, copied + 32 * 1024, copied + 64 * 1024);
        writer.start(device, 12);
        const events: MigrationEvent[] = [];
        const move = await agent.resumeMove(offered.id, (event) => events.push(event));
        assert.equal(move.id, offered.id);
        assert.deepEqual(agent.resumableMoves(), []);
        // The first pass carries what the state does not vouch for; later passes (dbt's, a
        // snapshot's rounds) add what the guest writes meanwhile, as in any move.
        const firstPassBytes = move.migration.progressSnapshot.totalBytes;
        assert.ok(
          firstPassBytes < SIZE_BYTES,
          `first pass ${firstPassBytes} of ${SIZE_BYTES} bytes`,
        );
        await move.done;
        await writer.stop();
        const disk = await agent.getDisk('vm1');
        assert.equal(disk.datastore, 'fast');
        assertSameBytes(await device.read(0, SIZE_BYTES), writer.model, 'export after the resume');
        assertSameBytes(await readFile(join(dataDir, 'fast', 'vm1.raw')), writer.model, 'image');
        assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
      } finally {
        await agent.close();
      }
    },
  );
}

toolTest(
  'an interrupted move nobody resumes survives a restart, then abandon rolls it back',
  [],
  async () => {
    const dataDir = await makeTempDir();
    const writer = await crashHalfWay(dataDir, 'mirror');
    let agent = await Agent.open({ dataDir });
    let device = agent.exports.lookup('vm1')?.device;
    assert.ok(device);
    writer.model.set(writer.expectedFor(await device.read(0, SIZE_BYTES)));
    writer.pending = undefined;
    const [first] = agent.resumableMoves();
    assert.ok(first !== undefined);
    await assert.rejects(
      agent.moveDisk({ name: 'vm1', datastore: 'fast' }, () => {}),
      /interrupted move/,
    );
    writer.start(device, 21);
    await new Promise((resolve) => setTimeout(resolve, 300));
    await writer.stop();
    await agent.close();
    agent = await Agent.open({ dataDir });
    try {
      const [again, ...others] = agent.resumableMoves();
      assert.ok(again !== undefined && others.length === 0);
      assert.equal(again.id, first.id);
      assert.ok(again.copiedBytes <= first.copiedBytes, 'writes while offered only add to copy');
      await agent.abandonMove(again.id);
      assert.deepEqual(agent.resumableMoves(), []);
      device = agent.exports.lookup('vm1')?.device;
      assert.ok(device);
      assertSameBytes(await device.read(0, SIZE_BYTES), writer.model, 'source after abandon');
      assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
      assert.deepEqual(await readdir(join(dataDir, 'fast')), []);
    } finally {
      await agent.close();
    }
  },
);

toolTest(
  'resume after kill -9 in the copy (VM): the home and both disks go over, every acknowledged write kept',
  [],
  async () => {
    const dataDir = await makeTempDir();
    const disks = ['web-a', 'web-b'] as const;
    const sizeBytes = 16 * MiB;
    const serve = await startServe(
      ['--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'],
      { FERRY_CRASH_AT: 'copy' },
    );
    const models: Buffer[] = [];
    let writer: RecordingWriter | undefined;
    try {
      const fast = join(dataDir, 'fast');
      await mkdir(fast, { recursive: true });
      await api(serve, 'POST', '/v1/datastores', { name: 'fast', path: fast });
      const clients: NbdClient[] = [];
      for (const [index, name] of disks.entries()) {
        await api(serve, 'POST', '/v1/disks', { name, size: sizeBytes });
        const client = await NbdClient.connect({
          exportName: name,
          host: '127.0.0.1',
          port: serve.ready.nbdPort,
        });
        const model = randomBytes(sizeBytes, prng(30 + index));
        for (let at = 0; at < sizeBytes; at += MiB) {
          await client.write(at, model.subarray(at, at + MiB));
        }
        clients.push(client);
        models.push(model);
      }
      const vm = await api<{ home: string }>(serve, 'POST', '/v1/vms', {
        name: 'web',
        disks: [...disks],
      });
      await writeFile(join(vm.home, 'notes.txt'), 'kept\n');
      const [first] = clients;
      const [firstModel] = models;
      assert.ok(first !== undefined && firstModel !== undefined);
      writer = new RecordingWriter(first, firstModel, { start: 0, end: HOT_BYTES });
      writer.start(first, 31);
      await api(serve, 'POST', '/v1/migrations', {
        vm: 'web',
        datastore: 'fast',
        speed: 8 * MiB,
      });
      assert.equal(await serve.exited, null, 'the server was killed by a signal');
      await writer.stop();
      for (const client of clients) await client.close().catch(() => undefined);
    } finally {
      serve.child.kill('SIGKILL');
    }
    const agent = await Agent.open({ dataDir });
    try {
      const devices = disks.map((name) => agent.exports.lookup(name)?.device);
      const [device] = devices;
      assert.ok(device !== undefined && writer !== undefined);
      writer.model.set(writer.expectedFor(await device.read(0, sizeBytes)));
      writer.pending = undefined;
      const [offered, ...others] = agent.resumableMoves();
      assert.ok(offered !== undefined && others.length === 0, 'one move is offered');
      assert.equal(offered.vm, 'web');
      assert.equal(offered.disk, 'web');
      assert.deepEqual([...offered.disks].sort(), [...disks]);
      assert.equal(offered.sizeBytes, 2 * sizeBytes);
      assert.equal((await agent.getVm('web')).datastore, 'local');
      writer.start(device, 32);
      const move = await agent.resumeMove(offered.id, () => {});
      const firstPassBytes = move.migration.progressSnapshot.totalBytes;
      assert.ok(firstPassBytes < 2 * sizeBytes, `first pass ${firstPassBytes}`);
      assert.ok(offered.copiedBytes > 0, `copied before the crash: ${offered.copiedBytes}`);
      await move.done;
      await writer.stop();
      const vm = await agent.getVm('web');
      assert.equal(vm.datastore, 'fast');
      assert.equal(await readFile(join(vm.home, 'notes.txt'), 'utf8'), 'kept\n');
      for (const [index, name] of disks.entries()) {
        const model = models[index];
        const served = devices[index];
        assert.ok(model !== undefined && served !== undefined);
        assert.equal((await agent.getDisk(name)).datastore, 'fast');
        assertSameBytes(await served.read(0, sizeBytes), model, `${name} after the resume`);
        assertSameBytes(await readFile(join(dataDir, 'fast', `${name}.raw`)), model, name);
      }
      assert.deepEqual(await readdir(join(dataDir, 'journal')), []);
    } finally {
      await agent.close();
    }
  },
);
