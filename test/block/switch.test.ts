import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setTimeout as sleep, setImmediate as turn } from 'node:timers/promises';
import type { BlockDevice, WriteOptions } from '../../src/block/device.js';
import { BlockErrorCode } from '../../src/block/errors.js';
import { PassThrough } from '../../src/block/filter.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { Switch } from '../../src/block/switch.js';
import { AssertionError } from '../../src/util/assert.js';

const SIZE_BYTES = 1024 * 1024;

/** Writes wait until `release()`: a write "in flight below" for as long as the test wants. */
class GatedWrites extends PassThrough {
  private readonly gates: Array<() => void> = [];
  get waitingCount(): number {
    return this.gates.length;
  }
  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await new Promise<void>((resolve) => this.gates.push(resolve));
    return this.next.write(offset, data, options);
  }
  release(): void {
    for (const open of this.gates.splice(0)) open();
  }
}

/** Records the order in which requests reach the device below, as `verb@offset`. */
class Arrivals extends PassThrough {
  readonly seen: string[] = [];
  override read(offset: number, length: number): Promise<Buffer> {
    this.seen.push(`read@${offset}`);
    return super.read(offset, length);
  }
  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.seen.push(`write@${offset}`);
    return super.write(offset, data, options);
  }
  override writeZeroes(offset: number, length: number): Promise<void> {
    this.seen.push(`writeZeroes@${offset}`);
    return super.writeZeroes(offset, length);
  }
  override flush(): Promise<void> {
    this.seen.push('flush');
    return super.flush();
  }
}

const zeros = (length: number): Buffer => Buffer.alloc(length);
const readFrom = (device: BlockDevice, length = 4096): Promise<Buffer> => device.read(0, length);

describe('Switch', () => {
  it('holds a write issued during the pause, then lands it on the new target only', async () => {
    const source = new MemoryDevice(SIZE_BYTES);
    const target = new MemoryDevice(SIZE_BYTES);
    const device = new Switch(source);
    const data = Buffer.alloc(4096, 0x5a);

    await device.pause();
    let isDone = false;
    const write = device.write(0, data).then(() => {
      isDone = true;
    });
    await turn();
    assert.equal(device.heldCount, 1);
    assert.equal(isDone, false);
    assert.deepEqual(await readFrom(source), zeros(4096), 'not on the source');
    assert.deepEqual(await readFrom(target), zeros(4096), 'not on the target');

    assert.equal(device.repoint(target), source);
    device.resume();
    await write;
    assert.deepEqual(await readFrom(target), data);
    assert.deepEqual(await readFrom(source), zeros(4096));
    assert.deepEqual(await device.read(0, 4096), data);
    assert.equal(device.heldCount, 0);
  });

  it('pause() resolves only once the write in flight below has finished', async () => {
    const gated = new GatedWrites(new MemoryDevice(SIZE_BYTES));
    const device = new Switch(gated);
    const write = device.write(0, Buffer.alloc(512, 1));
    assert.equal(device.inFlightCount, 1);

    let isDrained = false;
    const paused = device.pause().then(() => {
      isDrained = true;
    });
    await turn();
    await turn();
    assert.equal(isDrained, false, 'pause resolved while a write was in flight');
    assert.equal(device.isPaused, true);

    gated.release();
    await paused;
    await write;
    assert.equal(isDrained, true);
    assert.equal(device.inFlightCount, 0);
    device.resume();
  });

  it('releases held requests in arrival order, before any later request', async () => {
    const arrivals = new Arrivals(new MemoryDevice(SIZE_BYTES));
    const device = new Switch(arrivals);
    await device.pause();
    const held = [
      device.write(0, Buffer.alloc(512, 1)),
      device.read(0, 512),
      device.writeZeroes(4096, 512),
      device.flush(),
      device.write(0, Buffer.alloc(512, 2)),
    ];
    assert.equal(device.heldCount, 5);
    assert.deepEqual(arrivals.seen, []);
    device.resume();
    const later = device.write(8192, Buffer.alloc(512, 3));
    await Promise.all([...held, later]);
    assert.deepEqual(arrivals.seen, [
      'write@0',
      'read@0',
      'writeZeroes@4096',
      'flush',
      'write@0',
      'write@8192',
    ]);
    assert.deepEqual(await held[1], Buffer.alloc(512, 1), 'the read saw the write before it');
    assert.deepEqual(await device.read(0, 512), Buffer.alloc(512, 2), 'the last write wins');
  });

  it('refuses a target of another size and keeps the current device', async () => {
    const source = new MemoryDevice(SIZE_BYTES);
    const device = new Switch(source);
    await device.pause();
    assert.throws(() => device.repoint(new MemoryDevice(SIZE_BYTES + 512)), {
      code: BlockErrorCode.EINVAL,
    });
    const write = device.write(0, Buffer.alloc(512, 9));
    device.resume();
    await write;
    assert.deepEqual(await source.read(0, 512), Buffer.alloc(512, 9));
  });

  it('reports size, caps and limits of the current device', async () => {
    const device = new Switch(new MemoryDevice(SIZE_BYTES));
    const readOnly = new MemoryDevice(SIZE_BYTES, { isReadOnly: true });
    assert.equal(device.size, SIZE_BYTES);
    assert.equal(device.caps.isReadOnly, false);
    await device.pause();
    device.repoint(readOnly);
    device.resume();
    assert.equal(device.caps, readOnly.caps);
    assert.equal(device.limits, readOnly.limits);
    await assert.rejects(device.write(0, zeros(1)), { code: BlockErrorCode.EPERM });
  });

  it('asserts its protocol: no double pause, no repoint before drained, no stray resume', async () => {
    const gated = new GatedWrites(new MemoryDevice(SIZE_BYTES));
    const device = new Switch(gated);
    assert.throws(() => device.resume(), AssertionError);
    assert.throws(() => device.repoint(new MemoryDevice(SIZE_BYTES)), AssertionError);

    const write = device.write(0, zeros(512));
    const paused = device.pause();
    assert.throws(() => device.pause(), AssertionError);
    assert.throws(() => device.repoint(new MemoryDevice(SIZE_BYTES)), AssertionError);
    gated.release();
    await Promise.all([paused, write]);
    device.resume();
  });

  it('measures the last pause, and a resume before the drain rejects the pause', async () => {
    const gated = new GatedWrites(new MemoryDevice(SIZE_BYTES));
    const device = new Switch(gated);
    assert.equal(device.lastPauseMs, undefined);
    await device.pause();
    await sleep(30);
    device.resume();
    assert.ok(
      device.lastPauseMs !== undefined && device.lastPauseMs >= 25,
      `${device.lastPauseMs}`,
    );

    const write = device.write(0, zeros(512));
    const abandoned = device.pause();
    device.resume();
    await assert.rejects(abandoned, { code: BlockErrorCode.EINVAL });
    gated.release();
    await write;
  });

  it('close rejects held requests and closes the current device', async () => {
    const source = new MemoryDevice(SIZE_BYTES);
    const target = new MemoryDevice(SIZE_BYTES);
    const device = new Switch(source);
    await device.pause();
    device.repoint(target);
    const held = [device.write(0, zeros(512)), device.flush()];
    await device.close();
    for (const request of held) await assert.rejects(request, { code: BlockErrorCode.ESHUTDOWN });
    await assert.rejects(target.flush(), { code: BlockErrorCode.ESHUTDOWN });
    await source.flush(); // the previous device belongs to whoever repointed
    await assert.rejects(device.read(0, 1), { code: BlockErrorCode.ESHUTDOWN });
    device.resume();
    await assert.rejects(device.read(0, 1), { code: BlockErrorCode.ESHUTDOWN });
  });
});
