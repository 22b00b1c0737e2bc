import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MemoryDevice } from '../../src/block/memory.js';
import { openRawFile } from '../../src/block/raw-file.js';
import { NbdClient } from '../../src/nbd/client.js';
import { encodeRequestHeader } from '../../src/nbd/codec.js';
import { Cmd, SIMPLE_REPLY_MAGIC } from '../../src/nbd/protocol.js';
import { closed, type Running, rawTransmission, readBytes, startServer } from './helpers.js';

const MiB = 1024 * 1024;
let running: Running;
let disk: MemoryDevice;

before(async () => {
  disk = new MemoryDevice(64 * MiB);
  running = await startServer({ vm1: disk, ro: new MemoryDevice(4 * MiB, { isReadOnly: true }) });
});
after(async () => {
  await running.server.close();
});

function client(exportName = 'vm1', wantStructured = true): Promise<NbdClient> {
  return NbdClient.connect({ port: running.port, exportName, wantStructured });
}

for (const structured of [true, false]) {
  test(`write then read back, ${structured ? 'structured' : 'simple'} replies`, async () => {
    const nbd = await client('vm1', structured);
    assert.equal(nbd.isStructured, structured);
    assert.equal(nbd.size, 64 * MiB);
    const data = randomBytes(300_000);
    await nbd.write(12345, data, { fua: true });
    assert.deepEqual(await nbd.read(12345, data.length), data);
    assert.deepEqual(
      await disk.read(12345, data.length),
      data,
      'the device holds what was acknowledged',
    );
    await nbd.flush();
    await nbd.close();
  });
}

test('pipelined requests are answered as they complete and all land', async () => {
  const nbd = await client();
  const writes = Array.from({ length: 2000 }, (_, i) => {
    const block = Buffer.alloc(4096, i & 0xff);
    return nbd.write(i * 4096, block);
  });
  assert.ok(nbd.inFlightCount > 100, 'requests were in flight together');
  await Promise.all(writes);
  const reads = await Promise.all(Array.from({ length: 2000 }, (_, i) => nbd.read(i * 4096, 4096)));
  for (const [i, block] of reads.entries()) {
    assert.ok(
      block.every((b) => b === (i & 0xff)),
      `block ${i}`,
    );
  }
  await nbd.close();
});

test('pipelined reads served from reused buffers each carry their own block', async () => {
  // A raw image fills the server's pooled buffers (MemoryDevice returns its own); a buffer
  // reused before the socket took its reply would show up here as another block's bytes.
  const dir = await mkdtemp(join(tmpdir(), 'ferry-server-'));
  const path = join(dir, 'pooled.img');
  const blocks = 512;
  const image = Buffer.alloc(blocks * 4096);
  for (let i = 0; i < blocks; i += 1) image.fill(i & 0xff, i * 4096, (i + 1) * 4096);
  await writeFile(path, image);
  const raw = await openRawFile(path, { provisioning: 'thin' });
  const pooled = await startServer({ pooled: raw });
  try {
    const nbd = await NbdClient.connect({ port: pooled.port, exportName: 'pooled' });
    for (let round = 0; round < 3; round += 1) {
      const reads = Array.from({ length: blocks }, (_, i) => nbd.read(i * 4096, 4096));
      const big = nbd.read(0, 1024 * 1024);
      for (const [i, block] of (await Promise.all(reads)).entries()) {
        assert.ok(block.equals(image.subarray(i * 4096, (i + 1) * 4096)), `block ${i}`);
      }
      assert.ok((await big).equals(image.subarray(0, 1024 * 1024)), 'the 1 MiB read');
    }
    await nbd.close();
  } finally {
    await pooled.server.close();
    await raw.close();
    await rm(dir, { recursive: true, force: true });
  }
});

test('out-of-range and read-only requests get the spec errors and the connection continues', async () => {
  const nbd = await client();
  await assert.rejects(nbd.read(64 * MiB - 10, 20), { code: 'EINVAL' });
  await assert.rejects(nbd.write(64 * MiB - 10, Buffer.alloc(20)), { code: 'ENOSPC' });
  await assert.rejects(nbd.writeZeroes(64 * MiB, 1), { code: 'ENOSPC' });
  await assert.rejects(nbd.trim(64 * MiB, 4096), { code: 'EINVAL' });
  await assert.rejects(nbd.extents(64 * MiB, 4096), { code: 'EINVAL' });
  assert.equal((await nbd.read(0, 10)).length, 10, 'still usable');
  await nbd.close();
  const ro = await client('ro');
  assert.equal(ro.caps.isReadOnly, true);
  await assert.rejects(ro.write(0, Buffer.alloc(10)), { code: 'EPERM' });
  await assert.rejects(ro.writeZeroes(0, 10), { code: 'EPERM' });
  await ro.close();
});

test('write zeroes, trim and block status report holes, zeros and data', async () => {
  const fresh = new MemoryDevice(8 * MiB);
  running.exports.set('map', { name: 'map', description: '', device: fresh });
  const nbd = await client('map');
  assert.equal(nbd.caps.canExtents, true);
  await nbd.write(MiB, Buffer.alloc(MiB, 7));
  await nbd.write(3 * MiB, Buffer.alloc(MiB, 9));
  await nbd.writeZeroes(3 * MiB, MiB, { mayTrim: false });
  await nbd.trim(MiB, 64 * 1024);
  const extents = await nbd.extents(0, 8 * MiB);
  assert.deepEqual(
    extents.map((e) => [e.offset / 1024, e.length / 1024, e.kind]),
    [
      [0, 1088, 'hole'],
      [1088, 960, 'data'],
      [2048, 1024, 'hole'],
      [3072, 1024, 'zero'],
      [4096, 4096, 'hole'],
    ],
  );
  assert.ok((await nbd.read(3 * MiB, MiB)).every((b) => b === 0));
  await nbd.writeZeroes(0, MiB, { fastOnly: true });
  await nbd.close();
  running.exports.delete('map');
});

test('a flush on one connection covers writes acknowledged on another (multi-conn)', async () => {
  const a = await client();
  const b = await client();
  assert.equal(a.caps.isMultiConnSafe, true);
  await a.write(0, Buffer.alloc(4096, 0xab));
  await b.flush();
  assert.ok((await b.read(0, 4096)).every((x) => x === 0xab));
  await Promise.all([a.close(), b.close()]);
});

test('unknown export is refused in the handshake', async () => {
  await assert.rejects(client('nope'), /refused export "nope"/);
});

test('a bad request magic closes that connection only', async () => {
  const bad = await rawTransmission(running.port, 'vm1');
  const good = await client();
  bad.write(Buffer.alloc(28, 0x41));
  await closed(bad);
  assert.equal((await good.read(0, 512)).length, 512);
  await good.close();
});

test('a write payload over 32 MiB closes that connection', async () => {
  const socket = await rawTransmission(running.port, 'vm1');
  socket.write(encodeRequestHeader(Cmd.Write, 0, 1n, 0, 33 * MiB));
  await closed(socket);
});

test('an unknown command gets EINVAL and the connection stays', async () => {
  const socket = await rawTransmission(running.port, 'vm1');
  socket.write(encodeRequestHeader(99, 0, 7n, 0, 0));
  const reply = await readBytes(socket, 16);
  assert.equal(reply.readUInt32BE(0), SIMPLE_REPLY_MAGIC);
  assert.equal(reply.readUInt32BE(4), 22);
  assert.equal(reply.readBigUInt64BE(8), 7n);
  socket.write(encodeRequestHeader(Cmd.Flush, 0, 8n, 0, 0));
  const flush = await readBytes(socket, 16);
  assert.equal(flush.readUInt32BE(4), 0);
  socket.destroy();
});

test('NBD_CMD_DISC finishes requests in flight, then closes', async () => {
  const socket = await rawTransmission(running.port, 'vm1');
  const write = encodeRequestHeader(Cmd.Write, 0, 5n, 8 * MiB, 4096);
  socket.write(
    Buffer.concat([write, Buffer.alloc(4096, 0x33), encodeRequestHeader(Cmd.Disc, 0, 6n, 0, 0)]),
  );
  const reply = await readBytes(socket, 16);
  assert.equal(reply.readUInt32BE(4), 0);
  await closed(socket);
  assert.ok((await disk.read(8 * MiB, 4096)).every((b) => b === 0x33));
});

test('the client fails requests in flight and closes at once when the server goes away', async () => {
  const alone = await startServer({ vm1: new MemoryDevice(4 * MiB) });
  const nbd = await NbdClient.connect({ port: alone.port, exportName: 'vm1' });
  await nbd.write(0, Buffer.alloc(4096, 1));
  await alone.server.close();
  await assert.rejects(nbd.read(0, 4096));
  // Closing a client whose connection is already gone must not wait for a 'close' that came.
  await nbd.close();
});
