import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryDevice } from '../../src/block/memory.js';
import { WriteGate } from '../../src/block/write-gate.js';

test('write gate: reads pass, changes wait for open and then land in arrival order', async () => {
  const device = new MemoryDevice(64 * 1024);
  await device.write(0, Buffer.alloc(4096, 1));
  const gate = new WriteGate(device);
  assert.deepEqual(await gate.read(0, 4096), Buffer.alloc(4096, 1), 'a read is not held');
  let landed = 0;
  const first = gate.write(0, Buffer.alloc(4096, 2)).then(() => (landed += 1));
  const second = gate.write(0, Buffer.alloc(4096, 3)).then(() => (landed += 1));
  const zeroes = gate.writeZeroes(8192, 4096).then(() => (landed += 1));
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(landed, 0, 'nothing changed before open');
  assert.deepEqual(await device.read(0, 4096), Buffer.alloc(4096, 1));
  await gate.flush();
  gate.open();
  await Promise.all([first, second, zeroes]);
  assert.equal(landed, 3);
  assert.deepEqual(await device.read(0, 4096), Buffer.alloc(4096, 3), 'the later write wins');
  await gate.write(4096, Buffer.alloc(4096, 4));
  assert.deepEqual(await device.read(4096, 4096), Buffer.alloc(4096, 4), 'open: straight through');
});

test('write gate: closing opens it and leaves the device below open', async () => {
  const device = new MemoryDevice(8192);
  const gate = new WriteGate(device);
  await gate.close();
  assert.ok(gate.isOpen);
  await device.write(0, Buffer.alloc(4096, 7));
  assert.deepEqual(await device.read(0, 4096), Buffer.alloc(4096, 7));
});
