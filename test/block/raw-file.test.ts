import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Extent } from '../../src/block/device.js';
import { BlockErrorCode } from '../../src/block/errors.js';
import { loadNativeFs, type NativeFs } from '../../src/block/native.js';
import {
  createRawImage,
  openRawFile,
  type Provisioning,
  RawFileDevice,
  statAllocatedBytes,
} from '../../src/block/raw-file.js';

const KIB = 1024;
const MIB = 1024 * KIB;
const GIB = 1024 * MIB;

let dir = '';
let serial = 0;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-raw-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Creates a fresh image, opens it, runs `body`, and closes and removes it whatever happens. */
async function withImage(
  provisioning: Provisioning,
  sizeBytes: number,
  body: (device: RawFileDevice, path: string) => Promise<void>,
  where = dir,
): Promise<void> {
  serial += 1;
  const path = join(where, `disk-${serial}.img`);
  await createRawImage(path, sizeBytes, provisioning);
  const device = await openRawFile(path, { provisioning });
  try {
    await body(device, path);
  } finally {
    await device.close();
    await rm(path, { force: true });
  }
}

function pattern(length: number, seed: number): Buffer {
  const bytes = Buffer.alloc(length);
  for (let i = 0; i < length; i += 1) bytes[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return bytes;
}

function isAllZero(bytes: Buffer): boolean {
  return bytes.every((byte) => byte === 0);
}

/** Asserts the runs are contiguous from `offset` and returns them without offsets, for comparing. */
function checkContiguous(runs: Extent[], offset: number): void {
  assert.ok(runs.length > 0, 'extents returned no run');
  let at = offset;
  for (const run of runs) {
    assert.equal(run.offset, at, 'runs must be contiguous');
    assert.ok(run.length > 0, 'runs must not be empty');
    at += run.length;
  }
}

/** Calls extents until `end`, as a copier does, checking each answer continues the last. */
async function mapAll(device: RawFileDevice, end = device.size): Promise<Extent[]> {
  const all: Extent[] = [];
  let at = 0;
  while (at < end) {
    const runs = await device.extents(at, end - at);
    checkContiguous(runs, at);
    for (const run of runs) {
      const last = all[all.length - 1];
      if (last && last.kind === run.kind) {
        all[all.length - 1] = { ...last, length: last.length + run.length };
      } else {
        all.push(run);
      }
      at += run.length;
    }
  }
  assert.equal(at, end);
  return all;
}

describe('createRawImage', () => {
  test('a thin image has its size and occupies almost nothing', async () => {
    const path = join(dir, 'thin-create.img');
    await createRawImage(path, 64 * MIB, 'thin');
    assert.equal((await stat(path)).size, 64 * MIB);
    assert.ok((await statAllocatedBytes(path)) <= 64 * KIB);
    await rm(path);
  });

  test('a thick image occupies its whole size', async () => {
    const path = join(dir, 'thick-create.img');
    await createRawImage(path, 64 * MIB, 'thick');
    assert.equal((await stat(path)).size, 64 * MIB);
    assert.ok((await statAllocatedBytes(path)) >= 64 * MIB);
    await rm(path);
  });

  test('refuses an existing path and leaves that file alone', async () => {
    const path = join(dir, 'exists.img');
    fs.writeFileSync(path, 'keep me');
    await assert.rejects(createRawImage(path, MIB, 'thin'), (error: unknown) => {
      assert.equal((error as { code?: unknown }).code, BlockErrorCode.EIO);
      assert.equal((error as { cause?: { code?: unknown } }).cause?.code, 'EEXIST');
      return true;
    });
    assert.equal(fs.readFileSync(path, 'utf8'), 'keep me');
    await rm(path);
  });

  test('a failed create leaves no partial file', async (t) => {
    // A size past the filesystem's largest file (16 TiB on ext4) fails after the file exists.
    const path = join(dir, 'too-big.img');
    await assert.rejects(createRawImage(path, 2 ** 53 - 1, 'thick'), (error: unknown) => {
      t.diagnostic(`rejected with ${(error as Error).message}`);
      return true;
    });
    assert.equal(fs.existsSync(path), false);
  });
});

describe('RawFileDevice', () => {
  test('declares its caps and limits', async () => {
    await withImage('thin', MIB, async (device) => {
      assert.deepEqual(device.caps, {
        isReadOnly: false,
        canFlush: true,
        fua: 'emulate',
        zero: 'native',
        trim: 'native',
        canExtents: true,
        isMultiConnSafe: true,
      });
      assert.deepEqual(device.limits, {
        minimumBytes: 1,
        preferredBytes: 4096,
        maximumBytes: 32 * MIB,
        inFlightMax: 64,
      });
      assert.equal(device.size, MIB);
      assert.equal(device.provisioning, 'thin');
    });
    await withImage('thick', MIB, async (device) => {
      assert.equal(device.caps.trim, 'none');
    });
  });

  for (const provisioning of ['thin', 'thick'] as const) {
    test(`${provisioning}: write then read round trips at odd offsets`, async () => {
      await withImage(provisioning, 8 * MIB, async (device) => {
        const pieces: [number, Buffer][] = [
          [1, pattern(511, 1)],
          [4093, pattern(9, 2)],
          [MIB - 3, pattern(70_001, 3)],
          [8 * MIB - 7, pattern(7, 4)],
        ];
        for (const [offset, data] of pieces) await device.write(offset, data);
        for (const [offset, data] of pieces) {
          assert.deepEqual(await device.read(offset, data.length), data);
        }
        assert.deepEqual(await device.read(0, 1), Buffer.alloc(1));
        assert.ok(isAllZero(await device.read(512, 4093 - 512)));
        const around = await device.read(4090, 16);
        assert.deepEqual(around.subarray(3, 12), pieces[1]?.[1]);
      });
    });
  }

  test('a FUA write is readable afterwards and flush succeeds', async () => {
    await withImage('thin', MIB, async (device, path) => {
      const data = pattern(3 * KIB, 9);
      await device.write(12_345, data, { fua: true });
      await device.flush();
      const onDisk = Buffer.alloc(data.length);
      const fd = fs.openSync(path, 'r');
      fs.readSync(fd, onDisk, 0, data.length, 12_345);
      fs.closeSync(fd);
      assert.deepEqual(onDisk, data);
    });
  });

  test('thin extents: holes and data where they were written, contiguous, ending at size', async () => {
    const sizeBytes = 16 * MIB;
    await withImage('thin', sizeBytes, async (device) => {
      await device.write(MIB, pattern(64 * KIB, 1));
      await device.write(3 * MIB, pattern(4 * KIB, 2));
      await device.write(sizeBytes - MIB, pattern(MIB, 3));

      const runs = await device.extents(0, sizeBytes);
      checkContiguous(runs, 0);
      assert.deepEqual(runs, [
        { offset: 0, length: MIB, kind: 'hole' },
        { offset: MIB, length: 64 * KIB, kind: 'data' },
        { offset: MIB + 64 * KIB, length: 2 * MIB - 64 * KIB, kind: 'hole' },
        { offset: 3 * MIB, length: 4 * KIB, kind: 'data' },
        { offset: 3 * MIB + 4 * KIB, length: sizeBytes - 4 * MIB - 4 * KIB, kind: 'hole' },
        { offset: sizeBytes - MIB, length: MIB, kind: 'data' },
      ]);

      // Starting inside a run, and bounded by length or by the size.
      assert.deepEqual(await device.extents(MIB + 4 * KIB, 8 * KIB), [
        { offset: MIB + 4 * KIB, length: 8 * KIB, kind: 'data' },
      ]);
      assert.deepEqual(await device.extents(2 * MIB, 2 * MIB), [
        { offset: 2 * MIB, length: MIB, kind: 'hole' },
        { offset: 3 * MIB, length: 4 * KIB, kind: 'data' },
        { offset: 3 * MIB + 4 * KIB, length: MIB - 4 * KIB, kind: 'hole' },
      ]);
      assert.deepEqual(await device.extents(sizeBytes - 10, 100), [
        { offset: sizeBytes - 10, length: 10, kind: 'data' },
      ]);
      // At most `runsMax` runs (NBD's REQ_ONE asks for one), still starting at the offset.
      assert.deepEqual(await device.extents(0, sizeBytes, 1), [
        { offset: 0, length: MIB, kind: 'hole' },
      ]);
      assert.deepEqual(await device.extents(MIB, sizeBytes, 2), [
        { offset: MIB, length: 64 * KIB, kind: 'data' },
        { offset: MIB + 64 * KIB, length: 2 * MIB - 64 * KIB, kind: 'hole' },
      ]);
    });
  });

  test('thick extents: allocated-unwritten space reports as zero, written as data', async () => {
    await withImage('thick', 4 * MIB, async (device) => {
      assert.deepEqual(await device.extents(0, 4 * MIB), [
        { offset: 0, length: 4 * MIB, kind: 'zero' },
      ]);
      await device.write(MIB, pattern(8 * KIB, 5));
      assert.deepEqual(await device.extents(0, 4 * MIB), [
        { offset: 0, length: MIB, kind: 'zero' },
        { offset: MIB, length: 8 * KIB, kind: 'data' },
        { offset: MIB + 8 * KIB, length: 3 * MIB - 8 * KIB, kind: 'zero' },
      ]);
    });
  });

  test('thin writeZeroes with mayTrim frees the blocks and reads zeros', async () => {
    await withImage('thin', 8 * MIB, async (device, path) => {
      await device.write(0, pattern(4 * MIB, 1));
      await device.flush();
      const before = await statAllocatedBytes(path);
      assert.ok(before >= 4 * MIB);
      await device.writeZeroes(MIB, 2 * MIB, { mayTrim: true });
      assert.ok((await statAllocatedBytes(path)) <= before - 2 * MIB);
      assert.ok(isAllZero(await device.read(MIB, 2 * MIB)));
      assert.deepEqual(await device.read(MIB - 4, 4), pattern(MIB, 1).subarray(MIB - 4));
      assert.deepEqual((await device.extents(MIB, 2 * MIB))[0], {
        offset: MIB,
        length: 2 * MIB,
        kind: 'hole',
      });
    });
  });

  test('writeZeroes without mayTrim reads zeros, including partial blocks', async () => {
    await withImage('thin', 8 * MIB, async (device) => {
      const data = pattern(4 * MIB, 2);
      await device.write(0, data);
      await device.writeZeroes(100, 5000);
      await device.writeZeroes(2 * MIB, MIB, { fua: true });
      const back = await device.read(0, 4 * MIB);
      assert.deepEqual(back.subarray(0, 100), data.subarray(0, 100));
      assert.ok(isAllZero(back.subarray(100, 5100)));
      assert.deepEqual(back.subarray(5100, 2 * MIB), data.subarray(5100, 2 * MIB));
      assert.ok(isAllZero(back.subarray(2 * MIB, 3 * MIB)));
      assert.deepEqual(back.subarray(3 * MIB), data.subarray(3 * MIB));
    });
  });

  test('thick writeZeroes keeps every block allocated, even with mayTrim', async () => {
    await withImage('thick', 8 * MIB, async (device, path) => {
      await device.write(0, pattern(8 * MIB, 3));
      await device.flush();
      await device.writeZeroes(0, 4 * MIB, { mayTrim: true });
      await device.writeZeroes(4 * MIB, 4 * MIB);
      assert.ok((await statAllocatedBytes(path)) >= 8 * MIB);
      // Before reading: ext4 reports cached pages of unwritten extents as data once read.
      assert.deepEqual(await device.extents(0, 8 * MIB), [
        { offset: 0, length: 8 * MIB, kind: 'zero' },
      ]);
      assert.ok(isAllZero(await device.read(0, 8 * MIB)));
    });
  });

  test('trim releases blocks on a thin image and none on a thick one', async () => {
    await withImage('thin', 8 * MIB, async (device, path) => {
      await device.write(0, pattern(8 * MIB, 4));
      await device.flush();
      await device.trim(0, 8 * MIB, { fua: true });
      assert.ok((await statAllocatedBytes(path)) <= 64 * KIB);
      assert.deepEqual(await device.extents(0, 8 * MIB), [
        { offset: 0, length: 8 * MIB, kind: 'hole' },
      ]);
    });
    await withImage('thick', 8 * MIB, async (device, path) => {
      const data = pattern(MIB, 5);
      await device.write(0, data);
      await device.trim(0, 8 * MIB);
      assert.ok((await statAllocatedBytes(path)) >= 8 * MIB);
      assert.deepEqual(await device.read(0, MIB), data);
    });
  });

  test('where the filesystem lacks ZERO_RANGE (tmpfs), zeroing still keeps blocks', async (t) => {
    if (!fs.existsSync('/dev/shm') || fs.statfsSync('/dev/shm').type !== 0x01021994) {
      t.skip('/dev/shm is not tmpfs here');
      return;
    }
    const shmDir = await mkdtemp('/dev/shm/ferry-raw-');
    try {
      await withImage(
        'thin',
        4 * MIB,
        async (device, path) => {
          await device.write(0, pattern(4 * MIB, 6));
          await device.writeZeroes(MIB, 2 * MIB, { fastOnly: true });
          assert.ok((await statAllocatedBytes(path)) >= 4 * MIB);
          assert.ok(isAllZero(await device.read(MIB, 2 * MIB)));
          await device.writeZeroes(MIB, MIB, { mayTrim: true });
          assert.ok((await statAllocatedBytes(path)) <= 3 * MIB);
        },
        shmDir,
      );
    } finally {
      await rm(shmDir, { recursive: true, force: true });
    }
  });

  test('without any fallocate support: zero buffers, or ENOTSUP when fastOnly', async () => {
    const path = join(dir, 'no-fallocate.img');
    await createRawImage(path, 4 * MIB, 'thin');
    const real = loadNativeFs();
    let calls = 0;
    const refusing: NativeFs = {
      ...real,
      fallocate: async () => {
        calls += 1;
        throw Object.assign(new Error('EOPNOTSUPP: Operation not supported, fallocate'), {
          code: 'EOPNOTSUPP',
        });
      },
    };
    const fd = fs.openSync(path, 'r+');
    const device = new RawFileDevice({
      path,
      provisioning: 'thin',
      isReadOnly: false,
      fd,
      sizeBytes: 4 * MIB,
      native: refusing,
    });
    try {
      const data = pattern(4 * MIB, 7);
      await device.write(0, data);
      await assert.rejects(device.writeZeroes(0, MIB, { fastOnly: true }), {
        code: BlockErrorCode.ENOTSUP,
      });
      const callsAfterLearning = calls;
      // 2.5 MiB crosses the 1 MiB chunking of the fallback.
      await device.writeZeroes(KIB, 2 * MIB + MIB / 2, { mayTrim: true });
      const back = await device.read(0, 4 * MIB);
      assert.deepEqual(back.subarray(0, KIB), data.subarray(0, KIB));
      assert.ok(isAllZero(back.subarray(KIB, KIB + 2 * MIB + MIB / 2)));
      assert.deepEqual(
        back.subarray(KIB + 2 * MIB + MIB / 2),
        data.subarray(KIB + 2 * MIB + MIB / 2),
      );
      await device.trim(0, MIB);
      assert.equal(calls, callsAfterLearning, 'refused modes are not asked again');
    } finally {
      await device.close();
      await rm(path);
    }
  });

  test('a read-only device reads and refuses writes, zeroes and trims with EPERM', async () => {
    const path = join(dir, 'read-only.img');
    await createRawImage(path, MIB, 'thin');
    const device = await openRawFile(path, { provisioning: 'thin', isReadOnly: true });
    try {
      assert.equal(device.caps.isReadOnly, true);
      assert.ok(isAllZero(await device.read(0, 4096)));
      const eperm = { code: BlockErrorCode.EPERM };
      await assert.rejects(device.write(0, Buffer.alloc(1)), eperm);
      await assert.rejects(device.writeZeroes(0, 4096), eperm);
      await assert.rejects(device.trim(0, 4096), eperm);
      await device.flush();
      assert.equal((await device.extents(0, MIB)).length, 1);
    } finally {
      await device.close();
      await rm(path);
    }
  });

  test('after close every call fails ESHUTDOWN, and close may be repeated', async () => {
    const path = join(dir, 'closed.img');
    await createRawImage(path, MIB, 'thin');
    const device = await openRawFile(path, { provisioning: 'thin' });
    await device.close();
    await device.close();
    const shutdown = { code: BlockErrorCode.ESHUTDOWN };
    await assert.rejects(device.read(0, 1), shutdown);
    await assert.rejects(device.write(0, Buffer.alloc(1)), shutdown);
    await assert.rejects(device.writeZeroes(0, 1), shutdown);
    await assert.rejects(device.trim(0, 1), shutdown);
    await assert.rejects(device.flush(), shutdown);
    await assert.rejects(device.cache(), shutdown);
    await assert.rejects(device.extents(0, 1), shutdown);
    await rm(path);
  });

  test('system errors arrive mapped: a missing file, a directory', async () => {
    await assert.rejects(openRawFile(join(dir, 'missing.img'), { provisioning: 'thin' }), {
      name: 'BlockError',
      code: BlockErrorCode.EIO,
    });
    await assert.rejects(openRawFile(dir, { provisioning: 'thin', isReadOnly: true }), {
      code: BlockErrorCode.EINVAL,
    });
  });

  test('maps a 100 GiB thin image with 1 GiB scattered in 256 pieces in under a second', async (t) => {
    const sizeBytes = 100 * GIB;
    const pieceBytes = 4 * MIB;
    const path = join(dir, 'large.img');
    await createRawImage(path, sizeBytes, 'thin');
    // 256 distinct slots out of 25,600, from a fixed-seed generator (LCG) so failures replay.
    const slotCount = sizeBytes / pieceBytes;
    const slots = new Set<number>();
    let seed = 12345;
    while (slots.size < 256) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      slots.add(seed % slotCount);
    }
    const piece = pattern(pieceBytes, 8);
    const fd = fs.openSync(path, 'r+');
    for (const slot of slots) fs.writeSync(fd, piece, 0, pieceBytes, slot * pieceBytes);
    fs.closeSync(fd);

    const expected: Extent[] = [];
    let at = 0;
    for (const slot of [...slots].sort((a, b) => a - b)) {
      const start = slot * pieceBytes;
      const last = expected[expected.length - 1];
      if (last && last.kind === 'data' && last.offset + last.length === start) {
        expected[expected.length - 1] = { ...last, length: last.length + pieceBytes };
      } else {
        if (start > at) expected.push({ offset: at, length: start - at, kind: 'hole' });
        expected.push({ offset: start, length: pieceBytes, kind: 'data' });
      }
      at = start + pieceBytes;
    }
    if (at < sizeBytes) expected.push({ offset: at, length: sizeBytes - at, kind: 'hole' });

    const device = await openRawFile(path, { provisioning: 'thin' });
    try {
      const startedMs = performance.now();
      const runs = await mapAll(device);
      const elapsedMs = performance.now() - startedMs;
      t.diagnostic(`mapped ${runs.length} runs in ${elapsedMs.toFixed(1)} ms`);
      assert.deepEqual(runs, expected);
      const dataBytes = runs.filter((run) => run.kind === 'data').reduce((n, r) => n + r.length, 0);
      assert.equal(dataBytes, GIB);
      assert.ok(elapsedMs < 1000, `mapping took ${elapsedMs} ms`);
    } finally {
      await device.close();
      await rm(path);
    }
  });
});

describe('raw file: copies in the kernel (the copier offload)', () => {
  test('copyRangeTo copies exactly the range; a closed or read-only target is refused', async () => {
    await withImage('thin', 4 * MIB, async (source) => {
      await withImage('thin', 4 * MIB, async (target, targetPath) => {
        const data = Buffer.alloc(MIB + 4096, 0x5a);
        await source.write(MIB - 4096, data);
        assert.equal(await source.copyRangeTo(target, MIB, 256 * KIB), true);
        const copied = await target.read(0, 4 * MIB);
        const expected = Buffer.alloc(4 * MIB);
        expected.fill(0x5a, MIB, MIB + 256 * KIB);
        assert.ok(copied.equals(expected), 'only the range was copied');
        const readOnly = await openRawFile(targetPath, { provisioning: 'thin', isReadOnly: true });
        try {
          await assert.rejects(source.copyRangeTo(readOnly, 0, 4096), {
            code: BlockErrorCode.EPERM,
          });
        } finally {
          await readOnly.close();
        }
      });
    });
  });

  test('cloneRangeTo answers false, touching nothing, where the file system has no reflinks', async (t) => {
    const type = fs.statfsSync(dir).type;
    const EXT4_MAGIC = 0xef53;
    if (type !== EXT4_MAGIC) t.skip('this check needs ext4, which cannot share extents');
    await withImage('thin', MIB, async (source) => {
      await withImage('thin', MIB, async (target) => {
        await source.write(0, Buffer.alloc(64 * KIB, 1));
        assert.equal(await source.cloneRangeTo(target, 0, 64 * KIB), false);
        assert.ok((await target.read(0, 64 * KIB)).equals(Buffer.alloc(64 * KIB)));
      });
    });
  });
});
