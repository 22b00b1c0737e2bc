import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import * as os from 'node:os';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { BlockErrorCode, fromSystemError } from '../../src/block/errors.js';
import type * as nativeModule from '../../src/block/native.js';
import { loadNativeFs } from '../../src/block/native.js';

const MIB = 1024 * 1024;

describe('native addon', () => {
  const native = loadNativeFs();
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ferry-native-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  /** A sparse file of `sizeBytes` with one MiB of data at `dataAt`. */
  function sparseFile(name: string, sizeBytes: number, dataAt: number): number {
    const fd = fs.openSync(join(dir, name), 'w+');
    fs.ftruncateSync(fd, sizeBytes);
    fs.writeSync(fd, Buffer.alloc(MIB, 0xab), 0, MIB, dataAt);
    return fd;
  }

  test('exposes the Linux fallocate flags', () => {
    assert.deepEqual(native.fallocFlags, { keepSize: 0x01, punchHole: 0x02, zeroRange: 0x10 });
  });

  test('seekData and seekHole find data and holes, -1 past the data', async () => {
    const fd = sparseFile('seek.img', 16 * MIB, 4 * MIB);
    try {
      assert.equal(await native.seekData(fd, 0), 4 * MIB);
      assert.equal(await native.seekHole(fd, 4 * MIB), 5 * MIB);
      assert.equal(await native.seekHole(fd, 0), 0);
      assert.equal(await native.seekData(fd, 5 * MIB), -1);
      assert.equal(await native.seekHole(fd, 16 * MIB), -1);
    } finally {
      fs.closeSync(fd);
    }
  });

  test('offsets past 4 GiB survive the trip as 64-bit values', async () => {
    const at = 5 * 1024 * MIB;
    const fd = sparseFile('big.img', at + 8 * MIB, at);
    try {
      assert.equal(await native.seekData(fd, 0), at);
      assert.equal(await native.seekHole(fd, at), at + MIB);
    } finally {
      fs.closeSync(fd);
    }
  });

  test('preadNowait copies cached bytes, short at end of file, and refuses bad arguments', () => {
    const fd = sparseFile('nowait.img', 2 * MIB, 0);
    try {
      // Just written: the page cache holds it, so RWF_NOWAIT reads it (or the kernel lacks it).
      const buffer = Buffer.alloc(4096);
      const count = native.preadNowait(fd, buffer, 4096);
      if (count === -os.constants.errno.EOPNOTSUPP) return;
      assert.equal(count, 4096);
      assert.ok(buffer.equals(Buffer.alloc(4096, 0xab)));
      assert.equal(native.preadNowait(fd, buffer, 2 * MIB - 100), 100);
      assert.equal(native.preadNowait(fd, buffer, 4 * MIB), 0);
      assert.throws(() => native.preadNowait(fd, buffer, -1), RangeError);
      assert.throws(() => native.preadNowait(fd, 'x' as unknown as Buffer, 0), TypeError);
    } finally {
      fs.closeSync(fd);
    }
  });

  test('fallocate punches a hole and zero-ranges', async () => {
    const fd = sparseFile('falloc.img', 8 * MIB, 0);
    const { keepSize, punchHole, zeroRange } = native.fallocFlags;
    try {
      await native.fallocate(fd, punchHole | keepSize, 0, MIB / 2);
      assert.equal(await native.seekData(fd, 0), MIB / 2);
      await native.fallocate(fd, zeroRange | keepSize, MIB / 2, 4096);
      const bytes = Buffer.alloc(8192);
      fs.readSync(fd, bytes, 0, bytes.length, MIB / 2);
      assert.ok(bytes.subarray(0, 4096).every((byte) => byte === 0));
      assert.ok(bytes.subarray(4096).every((byte) => byte === 0xab));
      assert.equal(fs.fstatSync(fd).size, 8 * MIB);
    } finally {
      fs.closeSync(fd);
    }
  });

  test('a failed call rejects with code and errno, which fromSystemError maps', async () => {
    const readOnlyFd = fs.openSync(join(dir, 'falloc.img'), 'r');
    const error = await native
      .fallocate(readOnlyFd, 0, 0, 4096)
      .then(() => assert.fail('fallocate on a read-only fd succeeded'))
      .catch((caught: unknown) => caught);
    fs.closeSync(readOnlyFd);
    assert.ok(error instanceof Error);
    assert.equal((error as NodeJS.ErrnoException).code, 'EBADF');
    assert.equal((error as NodeJS.ErrnoException).errno, -9);
    assert.equal((error as NodeJS.ErrnoException).syscall, 'fallocate');
    assert.equal(fromSystemError(error, 'fallocate').code, BlockErrorCode.ESHUTDOWN);

    await assert.rejects(native.seekData(readOnlyFd, 0), { code: 'EBADF', syscall: 'lseek' });
  });

  test('a mode the filesystem lacks rejects EOPNOTSUPP, mapped to ENOTSUP', async (t) => {
    // tmpfs punches holes but has no ZERO_RANGE: a real EOPNOTSUPP from the kernel.
    if (!isTmpfs('/dev/shm')) {
      t.skip('/dev/shm is not tmpfs here');
      return;
    }
    const shmDir = await mkdtemp('/dev/shm/ferry-native-');
    const fd = fs.openSync(join(shmDir, 'zero.img'), 'w+');
    const { keepSize, zeroRange } = native.fallocFlags;
    try {
      fs.ftruncateSync(fd, MIB);
      const error = await native.fallocate(fd, zeroRange | keepSize, 0, 4096).then(
        () => assert.fail('tmpfs accepted ZERO_RANGE'),
        (caught: unknown) => caught,
      );
      assert.equal((error as NodeJS.ErrnoException).code, 'EOPNOTSUPP');
      assert.equal(fromSystemError(error, 'zero').code, BlockErrorCode.ENOTSUP);
    } finally {
      fs.closeSync(fd);
      await rm(shmDir, { recursive: true, force: true });
    }
  });

  test('a missing addon fails with a clear error that says to run npm install', async () => {
    // The compiled module, copied into a tree with no native/build, is what a fresh clone runs.
    const blockDir = join(dir, 'clone', 'dist', 'src', 'block');
    await mkdir(blockDir, { recursive: true });
    await copyFile(
      fileURLToPath(new URL('../../src/block/native.js', import.meta.url)),
      join(blockDir, 'native.js'),
    );
    const utilDir = join(dir, 'clone', 'dist', 'src', 'util');
    await mkdir(utilDir, { recursive: true });
    await copyFile(
      fileURLToPath(new URL('../../src/util/errors.js', import.meta.url)),
      join(utilDir, 'errors.js'),
    );
    await writeFile(join(dir, 'clone', 'package.json'), '{"type":"module"}');
    const copy = (await import(
      pathToFileURL(join(blockDir, 'native.js')).href
    )) as typeof nativeModule;
    assert.throws(
      () => copy.loadNativeFs(),
      (error: unknown) => {
        assert.ok(error instanceof copy.NativeAddonError);
        assert.equal(error.code, 'ERR_FERRY_NATIVE_ADDON');
        assert.match(error.message, /run `npm install`/);
        assert.match(error.message, /native\/build\/Release\/ferry_native\.node/);
        return true;
      },
    );
  });

  test('refuses offsets that are negative, fractional or unsafe', async () => {
    await assert.rejects(native.seekData(0, -1), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(native.seekHole(0, 1.5), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(native.seekData(0, 2 ** 53), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(native.fallocate(0, 0, 0, 0), { code: 'ERR_OUT_OF_RANGE' });
    await assert.rejects(native.seekData(-1, 0), { code: 'ERR_OUT_OF_RANGE' });
  });
});

/** Whether `path` is on tmpfs (statfs f_type TMPFS_MAGIC). */
function isTmpfs(path: string): boolean {
  try {
    return fs.statfsSync(path).type === 0x01021994;
  } catch {
    return false;
  }
}
