import assert from 'node:assert/strict';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import type { MigrationEvent } from '../../src/migrate/migration.js';
import { NbdClient } from '../../src/nbd/index.js';
import { errorCodeOf } from '../../src/util/errors.js';
import { assertSameBytes, prng, randomBytes, startWriter } from '../migrate/harness.js';
import { type PeerWrap, startTwoHosts, type TwoHosts } from './two-hosts.js';

const MIB = 1024 * 1024;
const SIZE = 16 * MIB;

/**
 * A guest writing random blocks through `device` (one write in flight), counting the writes
 * acknowledged while the copy ran (between the `copy` phase and the switchover), so a test can
 * assert that writes really raced the copy.
 */
function startGuest(device: BlockDevice, model: Buffer, seed: number) {
  let phase = 'prepare';
  let racing = 0;
  const writer = startWriter(device, model, seed, () => {
    if (phase === 'copy') racing += 1;
  });
  return {
    onEvent(event: MigrationEvent): void {
      if (event.type === 'phase') phase = event.phase;
    },
    async stop(): Promise<{ writes: number; racing: number }> {
      return { writes: await writer.stop(), racing };
    },
  };
}

async function withHosts(
  run: (hosts: TwoHosts) => Promise<void>,
  options: { wrapA?: PeerWrap } = {},
): Promise<void> {
  const hosts = await startTwoHosts(options);
  try {
    await run(hosts);
  } finally {
    await hosts.close();
  }
}

async function seededDisk(hosts: TwoHosts): Promise<{ device: BlockDevice; model: Buffer }> {
  await hosts.a.agent.createDisk({ name: 'vm1', sizeBytes: SIZE });
  const device = hosts.a.agent.exports.lookup('vm1')?.device;
  assert.ok(device);
  const model = Buffer.alloc(SIZE);
  const initial = randomBytes(6 * MIB, prng(7));
  await device.write(MIB, initial);
  initial.copy(model, MIB);
  return { device, model };
}

async function readThroughNbd(port: number, exportName: string): Promise<Buffer> {
  const client = await NbdClient.connect({ host: '127.0.0.1', port, exportName });
  try {
    const parts: Buffer[] = [];
    for (let at = 0; at < client.size; at += 4 * MIB) parts.push(await client.read(at, 4 * MIB));
    return Buffer.concat(parts);
  } finally {
    await client.close();
  }
}

for (const method of METHOD_NAMES) {
  test(`cross-host move (${method}): the disk moves to host b while written; a passes it through`, async () => {
    await withHosts(async (hosts) => {
      const { a, b } = hosts;
      const { device, model } = await seededDisk(hosts);
      const guest = startGuest(device, model, 11);
      const events: MigrationEvent[] = [];
      const move = await a.agent.moveDiskToHost(
        {
          name: 'vm1',
          host: 'b',
          method,
          speedBytesPerSecond: 32 * MIB,
          tuning: { downtimeTargetMs: 20 },
        },
        (event) => {
          events.push(event);
          guest.onEvent(event);
        },
      );
      const result = await move.done;
      // Writes after the switchover go through a's pass-through to b.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const { writes, racing } = await guest.stop();
      assert.ok(racing > 0, `no guest write raced the copy (${writes} writes)`);
      assert.ok(events.some((event) => event.type === 'switchover'));
      assert.ok(result.downtimeMs >= 0);
      const shown = await a.agent.getDisk('vm1');
      assert.equal(shown.host, 'b');
      assert.equal(shown.generation, 2);
      const there = await b.agent.getDisk('vm1');
      assert.equal(there.host, null);
      assert.equal(there.generation, 2);
      // Every acknowledged write: through the guest's own device, a's export, b's export, b's file.
      assertSameBytes(await device.read(0, SIZE), model, "the guest's device after the move");
      assertSameBytes(await readThroughNbd(a.nbdPort, 'vm1'), model, "a's pass-through export");
      assertSameBytes(await readThroughNbd(b.nbdPort, 'vm1'), model, "b's export");
      await b.agent.close();
      assertSameBytes(await readFile(there.image), model, "b's image file");
      const local = await readdir(join(a.dataDir, 'datastores', 'local'));
      assert.deepEqual(
        local.filter((name) => !name.startsWith('.')),
        ['vm1.moved.json'],
        'a keeps only the tombstone naming b',
      );
      assert.deepEqual(await readdir(join(a.dataDir, 'journal')), []);
    });
  });
}

test('cross-host move: cancel keeps the disk on a and b drops its partial copy', async () => {
  await withHosts(async (hosts) => {
    const { a, b } = hosts;
    const { device, model } = await seededDisk(hosts);
    const guest = startGuest(device, model, 12);
    let cancel = (): void => {};
    const move = await a.agent.moveDiskToHost(
      { name: 'vm1', host: 'b', speedBytesPerSecond: 4 * MIB },
      (event) => {
        guest.onEvent(event);
        if (event.type === 'phase' && event.phase === 'copy') setTimeout(() => cancel(), 100);
      },
    );
    cancel = () => void move.migration.cancel();
    await assert.rejects(move.done, (error) => errorCodeOf(error) === 'ERR_CANCELLED');
    await guest.stop();
    assert.equal((await a.agent.getDisk('vm1')).host, null);
    assertSameBytes(await device.read(0, SIZE), model, 'the disk on a');
    await assert.rejects(b.agent.getDisk('vm1'));
    const files = await readdir(join(b.dataDir, 'datastores', 'local'));
    assert.deepEqual(
      files.filter((name) => !name.startsWith('.')),
      [],
    );
    assert.deepEqual(b.agent.receiver.list(), []);
  });
});

test('cross-host move: b going away mid-copy fails the job; the guest stays on a', async () => {
  await withHosts(async (hosts) => {
    const { a, b } = hosts;
    const { device, model } = await seededDisk(hosts);
    const guest = startGuest(device, model, 13);
    const move = await a.agent.moveDiskToHost(
      { name: 'vm1', host: 'b', speedBytesPerSecond: 4 * MIB },
      (event) => {
        guest.onEvent(event);
        if (event.type === 'phase' && event.phase === 'copy') {
          setTimeout(() => void b.server.close(), 100);
        }
      },
    );
    await assert.rejects(move.done, (error) => errorCodeOf(error) === 'ERR_TARGET_FAILED');
    const { writes } = await guest.stop();
    assert.ok(writes > 0);
    assert.equal((await a.agent.getDisk('vm1')).host, null);
    assertSameBytes(await device.read(0, SIZE), model, 'the disk on a');
    assert.deepEqual(await readdir(join(a.dataDir, 'journal')), []);
  });
});

/** A link to b whose commit reaches b but whose answer is lost, `losses` times. */
function loseCommitAnswers(losses: number): PeerWrap {
  let left = losses;
  return (link) => ({
    ...link,
    async post<T>(path: string, body?: unknown, options?: { timeoutMs?: number }): Promise<T> {
      const answer = await link.post<T>(path, body, options);
      if (path.endsWith('/commit') && left > 0) {
        left -= 1;
        throw Object.assign(new Error('connection reset after the request was sent'), {
          code: 'ERR_PEER_UNREACHABLE',
        });
      }
      return answer;
    },
  });
}

/** A link to b that drops the commit request itself (b never sees it) once. */
function dropCommitRequest(): PeerWrap {
  let isDropped = false;
  return (link) => ({
    ...link,
    async post<T>(path: string, body?: unknown, options?: { timeoutMs?: number }): Promise<T> {
      if (path.endsWith('/commit') && !isDropped) {
        isDropped = true;
        throw Object.assign(new Error('connection refused'), { code: 'ERR_PEER_UNREACHABLE' });
      }
      return link.post<T>(path, body, options);
    },
  });
}

test('cross-host move: a lost commit answer is resolved by asking b, never guessed (committed)', async () => {
  await withHosts(
    async (hosts) => {
      const { device, model } = await seededDisk(hosts);
      const events: MigrationEvent[] = [];
      const move = await hosts.a.agent.moveDiskToHost({ name: 'vm1', host: 'b' }, (event) =>
        events.push(event),
      );
      await move.done;
      assert.equal((await hosts.a.agent.getDisk('vm1')).host, 'b');
      assert.ok(
        events.some(
          (event) => event.type === 'message' && event.message.includes('answered: committed'),
        ),
      );
      assertSameBytes(await device.read(0, SIZE), model, 'through the pass-through');
    },
    { wrapA: loseCommitAnswers(1) },
  );
});

test('cross-host move: a commit that never reached b is resolved as aborted; the disk stays on a', async () => {
  await withHosts(
    async (hosts) => {
      const { device, model } = await seededDisk(hosts);
      const move = await hosts.a.agent.moveDiskToHost({ name: 'vm1', host: 'b' }, () => {});
      await assert.rejects(move.done, (error) => errorCodeOf(error) === 'ERR_TARGET_FAILED');
      assert.equal((await hosts.a.agent.getDisk('vm1')).host, null);
      await assert.rejects(hosts.b.agent.getDisk('vm1'));
      assertSameBytes(await device.read(0, SIZE), model, 'the disk on a');
    },
    { wrapA: dropCommitRequest() },
  );
});

test('cross-host move: the receiving export is invisible to plain clients and other keys', async () => {
  await withHosts(async (hosts) => {
    const { a, b } = hosts;
    await seededDisk(hosts);
    let exportName = '';
    const move = await a.agent.moveDiskToHost(
      { name: 'vm1', host: 'b', speedBytesPerSecond: 2 * MIB },
      (event) => {
        if (event.type === 'phase' && event.phase === 'copy') {
          exportName = `ferry-receive-${b.agent.receiver.list()[0]?.id}`;
        }
      },
    );
    while (exportName === '') await new Promise((resolve) => setTimeout(resolve, 10));
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port: b.nbdPort, exportName }),
      'a plain client must not find the receiving export',
    );
    const stranger = { identity: 'stranger', key: Buffer.alloc(32, 7) };
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port: b.nbdPort, exportName, tls: { psk: stranger } }),
    );
    const peer = await NbdClient.connect({
      host: '127.0.0.1',
      port: b.nbdPort,
      exportName,
      tls: { psk: hosts.key },
    });
    await peer.close();
    move.migration.cancel();
    await move.done.catch(() => undefined);
  });
});

test('cross-host move: the disk can come back from b to a', async () => {
  await withHosts(async (hosts) => {
    const { a, b } = hosts;
    const { device, model } = await seededDisk(hosts);
    await (await a.agent.moveDiskToHost({ name: 'vm1', host: 'b' }, () => {})).done;
    const onB = b.agent.exports.lookup('vm1')?.device;
    assert.ok(onB);
    const extra = randomBytes(MIB, prng(3));
    await onB.write(2 * MIB, extra);
    extra.copy(model, 2 * MIB);
    await (await b.agent.moveDiskToHost({ name: 'vm1', host: 'a' }, () => {})).done;
    const back = await a.agent.getDisk('vm1');
    assert.equal(back.host, null);
    assert.equal(back.generation, 3);
    assert.equal((await b.agent.getDisk('vm1')).host, 'a');
    assertSameBytes(await readThroughNbd(a.nbdPort, 'vm1'), model, 'a, home again');
    // The guest that stayed on a's old pass-through is moved onto the local disk.
    assertSameBytes(await device.read(0, SIZE), model, "a's old guest device");
    assertSameBytes(await readThroughNbd(b.nbdPort, 'vm1'), model, "b's pass-through");
  });
});

test('cross-host move: into a datastore both hosts share, the data goes over the storage path', async () => {
  await withHosts(async (hosts) => {
    const { a, b } = hosts;
    const shared = join(b.dataDir, 'nfs');
    await mkdir(shared);
    await b.agent.addDatastore('nfs', shared);
    await a.agent.addDatastore('nfs-here', shared);
    const { device, model } = await seededDisk(hosts);
    const guest = startGuest(device, model, 14);
    const events: MigrationEvent[] = [];
    const move = await a.agent.moveDiskToHost(
      { name: 'vm1', host: 'b', datastore: 'nfs', speedBytesPerSecond: 32 * MIB },
      (event) => {
        events.push(event);
        guest.onEvent(event);
      },
    );
    await move.done;
    const { racing } = await guest.stop();
    assert.ok(racing > 0, 'no guest write raced the copy');
    const path = events.find(
      (event) => event.type === 'message' && event.message.startsWith('copy path'),
    );
    assert.ok(
      path?.type === 'message' && path.message.includes('shared storage'),
      JSON.stringify(path),
    );
    // Only the guest's last writes, through the pass-through after the switchover, reach b's
    // stack; the 6 MiB of data and the mirrored writes went to the file directly.
    const throughB = b.agent.diskStats('vm1').verbs.write.bytes;
    assert.ok(throughB < 2 * MIB, `${throughB} bytes went through b`);
    assertSameBytes(await readThroughNbd(b.nbdPort, 'vm1'), model, "b's export");
    assertSameBytes(await device.read(0, SIZE), model, "a's pass-through");
    // a sees the same directory, but the disk is b's: a restarted a must not serve it itself.
    await a.agent.close();
    const reopened = await hosts.reopen('a');
    const shown = await reopened.getDisk('vm1');
    assert.equal(shown.host, 'b');
  });
});

/** A link to b whose resolve never answers, and whose commit reaches b (or not) unanswered. */
function silentAfterCommit(isCommitDelivered: boolean): PeerWrap {
  return (link) => ({
    ...link,
    async post<T>(path: string, body?: unknown, options?: { timeoutMs?: number }): Promise<T> {
      const unreachable = Object.assign(new Error('no route to host'), {
        code: 'ERR_PEER_UNREACHABLE',
      });
      if (path.endsWith('/commit')) {
        if (isCommitDelivered) await link.post(path, body, options);
        throw unreachable;
      }
      if (path.endsWith('/resolve')) throw unreachable;
      return link.post<T>(path, body, options);
    },
  });
}

for (const isCommitDelivered of [true, false]) {
  const outcome = isCommitDelivered ? 'committed' : 'not committed';
  test(`cross-host move: the agent stops while b cannot say how the commit ended (${outcome}); the next start asks b and serves the right copy`, async () => {
    await withHosts(
      async (hosts) => {
        const { a } = hosts;
        const { model } = await seededDisk(hosts);
        let isHeld = false;
        const move = await a.agent.moveDiskToHost({ name: 'vm1', host: 'b' }, (event) => {
          if (event.type === 'message' && event.message.includes('guest I/O is held'))
            isHeld = true;
        });
        while (!isHeld) await new Promise((resolve) => setTimeout(resolve, 10));
        await a.agent.close();
        await assert.rejects(move.done, (error) => errorCodeOf(error) === 'ERR_COMMIT_UNKNOWN');
        // The record (its copy state beside it is of no use once the commit was asked for).
        const journal = await readdir(join(a.dataDir, 'journal'));
        const records = journal.filter((file) => !file.endsWith('.bitmap'));
        assert.equal(records.length, 1, 'the move stays journaled for the next start');
        const reopened = await hosts.reopen('a');
        const shown = await reopened.getDisk('vm1');
        assert.equal(shown.host, isCommitDelivered ? 'b' : null);
        assert.deepEqual(await readdir(join(a.dataDir, 'journal')), []);
        const served = reopened.exports.lookup('vm1')?.device;
        assert.ok(served);
        assertSameBytes(await served.read(0, SIZE), model, 'vm1 after the restart');
      },
      { wrapA: silentAfterCommit(isCommitDelivered) },
    );
  });
}
