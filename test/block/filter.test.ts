import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice, WriteOptions, ZeroOptions } from '../../src/block/device.js';
import { BlockError, BlockErrorCode, isBlockError } from '../../src/block/errors.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Switch } from '../../src/block/switch.js';

const SIZE_BYTES = 1024 * 1024;

/** The smallest observe-only filter: everything inherited. */
class Plain extends PassThrough {}

/** Records each call that reaches it, with its arguments, before passing it on. */
class Recorder extends PassThrough {
  readonly calls: unknown[][] = [];
  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.calls.push(['write', offset, data.length, options]);
    return super.write(offset, data, options);
  }
  override writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    this.calls.push(['writeZeroes', offset, length, options]);
    return super.writeZeroes(offset, length, options);
  }
  override trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.calls.push(['trim', offset, length, options]);
    return super.trim(offset, length, options);
  }
  override cache(offset: number, length: number): Promise<void> {
    this.calls.push(['cache', offset, length]);
    return super.cache(offset, length);
  }
  override flush(): Promise<void> {
    this.calls.push(['flush']);
    return super.flush();
  }
}

const isShutdown = (error: unknown): boolean =>
  isBlockError(error) && error.code === BlockErrorCode.ESHUTDOWN;

describe('PassThrough', () => {
  it('delegates every data verb and its result', async () => {
    const memory = new MemoryDevice(SIZE_BYTES);
    const device: BlockDevice = new Plain(memory);
    const data = Buffer.alloc(4096, 0xab);

    await device.write(65536, data);
    assert.deepEqual(await memory.read(65536, 4096), data);
    assert.deepEqual(await device.read(65536, 4096), data);

    await device.writeZeroes(65536, 65536, { mayTrim: true });
    assert.deepEqual(await device.extents(0, SIZE_BYTES), await memory.extents(0, SIZE_BYTES));
    assert.deepEqual(await device.extents(0, SIZE_BYTES), [
      { offset: 0, length: SIZE_BYTES, kind: 'hole' },
    ]);

    await device.write(0, data);
    await device.trim(0, 65536);
    assert.deepEqual(await memory.read(0, 4096), Buffer.alloc(4096));
    await device.flush();
    await device.cache(0, 4096);
  });

  it('passes options through unchanged', async () => {
    const recorder = new Recorder(new MemoryDevice(SIZE_BYTES));
    const device = new Plain(recorder);
    await device.write(0, Buffer.alloc(512), { fua: true });
    await device.writeZeroes(512, 512, { mayTrim: false, fastOnly: true });
    await device.trim(1024, 512, { fua: true });
    await device.cache(2048, 512);
    await device.flush();
    assert.deepEqual(recorder.calls, [
      ['write', 0, 512, { fua: true }],
      ['writeZeroes', 512, 512, { mayTrim: false, fastOnly: true }],
      ['trim', 1024, 512, { fua: true }],
      ['cache', 2048, 512],
      ['flush'],
    ]);
  });

  it('hands back the error of the device below unchanged', async () => {
    const failure = new BlockError(BlockErrorCode.EIO, 'medium error');
    class Failing extends PassThrough {
      override read(): Promise<Buffer> {
        return Promise.reject(failure);
      }
    }
    const device = new Plain(new Failing(new MemoryDevice(SIZE_BYTES)));
    await assert.rejects(device.read(0, 1), (error: unknown) => error === failure);
  });

  it('reports size, caps and limits of the device below live, not as copies', async () => {
    const writable = new MemoryDevice(SIZE_BYTES);
    const readOnly = new MemoryDevice(SIZE_BYTES, { isReadOnly: true });
    const below = new Switch(writable);
    const device = new Plain(below);
    assert.equal(device.size, SIZE_BYTES);
    assert.equal(device.caps.isReadOnly, false);
    assert.equal(device.limits, writable.limits);

    await below.pause();
    below.repoint(readOnly);
    below.resume();
    assert.equal(device.caps.isReadOnly, true);
    assert.equal(device.caps, readOnly.caps);
    assert.equal(device.limits, readOnly.limits);
  });

  it('close closes the device below', async () => {
    const memory = new MemoryDevice(SIZE_BYTES);
    const device = new Plain(memory);
    await device.close();
    await assert.rejects(memory.read(0, 1), isShutdown);
    await assert.rejects(device.read(0, 1), isShutdown);
  });
});
