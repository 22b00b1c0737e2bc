import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { BlockErrorCode } from '../../src/block/errors.js';
import { MemoryDevice } from '../../src/block/memory.js';

const KIB = 1024;
const MIB = 1024 * KIB;
/** memory.ts allocates in 64 KiB pages; the tests aim at their edges. */
const PAGE_BYTES = 64 * KIB;

function pattern(length: number, seed: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i += 1) bytes[i] = (i * 13 + seed * 5 + 1) & 0xff;
  return bytes;
}

function isAllZero(bytes: Buffer): boolean {
  return bytes.every((byte) => byte === 0);
}

describe('MemoryDevice', () => {
  test('round trips across page boundaries', async () => {
    const device = new MemoryDevice(MIB);
    const pieces: [number, Buffer][] = [
      [PAGE_BYTES - 3, pattern(7, 1)],
      [3 * PAGE_BYTES - 1, pattern(2 * PAGE_BYTES + 2, 2)],
      [MIB - 5, pattern(5, 3)],
    ];
    for (const [offset, data] of pieces) await device.write(offset, data);
    for (const [offset, data] of pieces) {
      assert.deepEqual(await device.read(offset, data.length), data);
    }
    assert.ok(isAllZero(await device.read(0, PAGE_BYTES - 3)));
    assert.ok(isAllZero(await device.read(PAGE_BYTES + 4, 2 * PAGE_BYTES - 5)));
    // Pages 0-1, 2-5 and 15.
    assert.equal(device.allocatedBytes, 7 * PAGE_BYTES);
  });

  test('the buffer read belongs to the caller; the written one is not kept', async () => {
    const device = new MemoryDevice(PAGE_BYTES);
    const data = pattern(100, 4);
    await device.write(10, data);
    data.fill(0xff);
    const first = await device.read(10, 100);
    first.fill(0xee);
    assert.deepEqual(await device.read(10, 100), pattern(100, 4));
  });

  test('extents: holes, zeros and data by page, contiguous and bounded by size', async () => {
    const device = new MemoryDevice(8 * PAGE_BYTES + 100);
    await device.write(PAGE_BYTES + 10, Buffer.from('x'));
    await device.write(2 * PAGE_BYTES, pattern(PAGE_BYTES, 5));
    await device.writeZeroes(4 * PAGE_BYTES, 2 * PAGE_BYTES);
    await device.write(8 * PAGE_BYTES, Buffer.from('tail'));
    assert.deepEqual(await device.extents(0, device.size), [
      { offset: 0, length: PAGE_BYTES, kind: 'hole' },
      { offset: PAGE_BYTES, length: 2 * PAGE_BYTES, kind: 'data' },
      { offset: 3 * PAGE_BYTES, length: PAGE_BYTES, kind: 'hole' },
      { offset: 4 * PAGE_BYTES, length: 2 * PAGE_BYTES, kind: 'zero' },
      { offset: 6 * PAGE_BYTES, length: 2 * PAGE_BYTES, kind: 'hole' },
      { offset: 8 * PAGE_BYTES, length: 100, kind: 'data' },
    ]);
    assert.deepEqual(await device.extents(PAGE_BYTES + 5, 10), [
      { offset: PAGE_BYTES + 5, length: 10, kind: 'data' },
    ]);
    assert.deepEqual(await device.extents(8 * PAGE_BYTES + 50, MIB), [
      { offset: 8 * PAGE_BYTES + 50, length: 50, kind: 'data' },
    ]);
  });

  test('writeZeroes: mayTrim frees whole pages, otherwise they stay as zero; partial pages keep data', async () => {
    const device = new MemoryDevice(4 * PAGE_BYTES);
    const data = pattern(4 * PAGE_BYTES, 6);
    await device.write(0, data);
    await device.writeZeroes(PAGE_BYTES - 10, PAGE_BYTES + 20, { mayTrim: true });
    await device.writeZeroes(3 * PAGE_BYTES, PAGE_BYTES);
    const back = await device.read(0, 4 * PAGE_BYTES);
    assert.deepEqual(back.subarray(0, PAGE_BYTES - 10), data.subarray(0, PAGE_BYTES - 10));
    assert.ok(isAllZero(back.subarray(PAGE_BYTES - 10, 2 * PAGE_BYTES + 10)));
    assert.deepEqual(
      back.subarray(2 * PAGE_BYTES + 10, 3 * PAGE_BYTES),
      data.subarray(2 * PAGE_BYTES + 10, 3 * PAGE_BYTES),
    );
    assert.ok(isAllZero(back.subarray(3 * PAGE_BYTES)));
    assert.deepEqual(await device.extents(0, device.size), [
      { offset: 0, length: PAGE_BYTES, kind: 'data' },
      { offset: PAGE_BYTES, length: PAGE_BYTES, kind: 'hole' },
      { offset: 2 * PAGE_BYTES, length: PAGE_BYTES, kind: 'data' },
      { offset: 3 * PAGE_BYTES, length: PAGE_BYTES, kind: 'zero' },
    ]);
    assert.equal(device.allocatedBytes, 3 * PAGE_BYTES);
  });

  test('trim frees whole pages and the range reads as zeros', async () => {
    const device = new MemoryDevice(4 * PAGE_BYTES);
    await device.write(0, pattern(4 * PAGE_BYTES, 7));
    await device.trim(PAGE_BYTES, 2 * PAGE_BYTES);
    assert.equal(device.allocatedBytes, 2 * PAGE_BYTES);
    assert.ok(isAllZero(await device.read(PAGE_BYTES, 2 * PAGE_BYTES)));
    assert.deepEqual((await device.extents(PAGE_BYTES, 2 * PAGE_BYTES))[0], {
      offset: PAGE_BYTES,
      length: 2 * PAGE_BYTES,
      kind: 'hole',
    });
  });

  test('a read-only device reads and refuses writes, zeroes and trims with EPERM', async () => {
    const device = new MemoryDevice(PAGE_BYTES, { isReadOnly: true });
    assert.equal(device.caps.isReadOnly, true);
    assert.ok(isAllZero(await device.read(0, 16)));
    const eperm = { code: BlockErrorCode.EPERM };
    await assert.rejects(device.write(0, Buffer.alloc(1)), eperm);
    await assert.rejects(device.writeZeroes(0, 1), eperm);
    await assert.rejects(device.trim(0, 1), eperm);
    await device.flush();
  });

  test('after close every call fails ESHUTDOWN', async () => {
    const device = new MemoryDevice(PAGE_BYTES);
    await device.write(0, Buffer.from('gone'));
    await device.close();
    await device.close();
    const shutdown = { code: BlockErrorCode.ESHUTDOWN };
    await assert.rejects(device.read(0, 1), shutdown);
    await assert.rejects(device.write(0, Buffer.alloc(1)), shutdown);
    await assert.rejects(device.writeZeroes(0, 1), shutdown);
    await assert.rejects(device.trim(0, 1), shutdown);
    await assert.rejects(device.flush(), shutdown);
    await assert.rejects((device as BlockDevice).cache(0, 1), shutdown);
    await assert.rejects(device.extents(0, 1), shutdown);
  });

  test('a 100 GiB device costs only what is written', async () => {
    const device = new MemoryDevice(100 * 1024 * MIB);
    await device.write(50 * 1024 * MIB, pattern(10, 8));
    assert.equal(device.allocatedBytes, PAGE_BYTES);
    const runs = await device.extents(50 * 1024 * MIB - PAGE_BYTES, 3 * PAGE_BYTES);
    assert.deepEqual(
      runs.map((run) => run.kind),
      ['hole', 'data', 'hole'],
    );
  });
});
