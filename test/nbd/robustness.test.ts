import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { after, before, test } from 'node:test';
import { MemoryDevice } from '../../src/block/memory.js';
import { NbdClient } from '../../src/nbd/client.js';
import { encodeOptionHeader, encodeRequestHeader } from '../../src/nbd/codec.js';
import { Cmd } from '../../src/nbd/protocol.js';
import { prng, randomBytes, testSeed, withSeed } from '../block/random.js';
import { closed, type Running, rawTransmission, readBytes, startServer } from './helpers.js';

const MiB = 1024 * 1024;
let running: Running;

before(async () => {
  running = await startServer({ vm1: new MemoryDevice(64 * MiB) });
});
after(async () => {
  await running.server.close();
});

test('a client that pipelines reads without reading replies does not grow server memory without bound', async () => {
  const socket = await rawTransmission(running.port, 'vm1');
  socket.pause();
  // Buffers, not RSS: zero-filled reply buffers of a sparse device do not touch their pages.
  const before = process.memoryUsage().arrayBuffers;
  // 20,000 reads of 1 MiB: 20 GiB of replies if the server kept reading requests.
  const requests = Buffer.concat(
    Array.from({ length: 20_000 }, (_, i) =>
      encodeRequestHeader(Cmd.Read, 0, BigInt(i + 1), (i % 63) * MiB, MiB),
    ),
  );
  socket.write(requests);
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const grownMiB = (process.memoryUsage().arrayBuffers - before) / MiB;
  assert.ok(grownMiB < 150, `server memory grew by ${grownMiB.toFixed(0)} MiB`);
  // The server still answers others while this client is stuck.
  const other = await NbdClient.connect({ port: running.port, exportName: 'vm1' });
  assert.equal((await other.read(0, 4096)).length, 4096);
  await other.close();
  socket.destroy();
});

test('write payloads split over many socket chunks land whole, and the next request after them too', async () => {
  const seed = testSeed();
  await withSeed(seed, () => splitWrites(prng(seed)));
});

async function splitWrites(random: () => number): Promise<void> {
  const socket = await rawTransmission(running.port, 'vm1');
  const first = randomBytes(300_000, random);
  const second = randomBytes(5000, random);
  const stream = Buffer.concat([
    encodeRequestHeader(Cmd.Write, 0, 1n, 3 * MiB, first.length),
    first,
    encodeRequestHeader(Cmd.Write, 0, 2n, 5 * MiB + 7, second.length),
    second,
  ]);
  // Pieces of random size, each its own socket chunk (a pause between writes).
  for (let at = 0; at < stream.length; ) {
    const size = 1 + Math.floor(random() * 40_000);
    socket.write(stream.subarray(at, at + size));
    at += size;
    await new Promise((resolve) => setImmediate(resolve));
  }
  const replies = await readBytes(socket, 32);
  assert.equal(replies.readUInt32BE(4), 0, 'first reply is success');
  assert.equal(replies.readUInt32BE(20), 0, 'second reply is success');
  socket.destroy();
  const nbd = await NbdClient.connect({ port: running.port, exportName: 'vm1' });
  assert.ok((await nbd.read(3 * MiB, first.length)).equals(first));
  assert.ok((await nbd.read(5 * MiB + 7, second.length)).equals(second));
  await nbd.close();
}

test('a broken handshake (bad option magic) closes that connection', async () => {
  const socket = connect({ host: '127.0.0.1', port: running.port });
  await new Promise((resolve) => socket.once('connect', resolve));
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(1);
  socket.write(Buffer.concat([flags, Buffer.alloc(16, 0xff)]));
  await closed(socket);
});

test('unknown client flags close the connection', async () => {
  const socket = connect({ host: '127.0.0.1', port: running.port });
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(Buffer.from([0, 0, 0, 0x80]));
  await closed(socket);
});

test('an option larger than the limit closes the connection', async () => {
  const socket = connect({ host: '127.0.0.1', port: running.port });
  await new Promise((resolve) => socket.once('connect', resolve));
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(1);
  socket.write(Buffer.concat([flags, encodeOptionHeader(7, 1 << 30)]));
  await closed(socket);
});

test('the handshake works when delivered one byte at a time', async () => {
  // NbdClient writes whole messages; slow delivery is exercised from the server's side by a
  // socket that trickles a full GO handshake and a read.
  const socket = connect({ host: '127.0.0.1', port: running.port });
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.setNoDelay(true);
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3);
  const name = Buffer.from('vm1');
  const go = Buffer.alloc(4 + name.length + 2);
  go.writeUInt32BE(name.length, 0);
  name.copy(go, 4);
  const bytes = Buffer.concat([
    flags,
    encodeOptionHeader(7, go.length),
    go,
    encodeRequestHeader(Cmd.Read, 0, 9n, 0, 16),
  ]);
  let received = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    received = Buffer.concat([received, chunk]);
  });
  for (const byte of bytes) {
    socket.write(Buffer.from([byte]));
    await new Promise((resolve) => setImmediate(resolve));
  }
  const expected = 18 + 32 + 34 + 20 + 16 + 16;
  for (let i = 0; i < 100 && received.length < expected; i += 1)
    await new Promise((r) => setTimeout(r, 10));
  assert.equal(received.length, expected);
  assert.equal(received.readUInt32BE(expected - 32 + 4), 0, 'read succeeded');
  socket.destroy();
});

test('random bytes never crash the server (fuzz)', async () => {
  const seed = testSeed();
  await withSeed(seed, () => fuzzServer(prng(seed)));
});

async function fuzzServer(random: () => number): Promise<void> {
  for (let round = 0; round < 200; round += 1) {
    const useTransmission = round % 2 === 0;
    const socket = useTransmission
      ? await rawTransmission(running.port, 'vm1')
      : connect({ host: '127.0.0.1', port: running.port });
    if (!useTransmission) await new Promise((resolve) => socket.once('connect', resolve));
    socket.on('error', () => {});
    socket.resume();
    socket.write(randomBytes(1 + Math.floor(random() * 200), random));
    await new Promise((resolve) => setTimeout(resolve, 2));
    socket.destroy();
  }
  const nbd = await NbdClient.connect({ port: running.port, exportName: 'vm1' });
  assert.equal((await nbd.read(0, 512)).length, 512);
  await nbd.close();
}
