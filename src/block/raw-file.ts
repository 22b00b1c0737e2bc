import * as fs from 'node:fs';
import { open as openHandle, stat, unlink } from 'node:fs/promises';
import * as os from 'node:os';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { assert, assertSafeInteger } from '../util/assert.js';
import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  ExtentKind,
  WriteOptions,
  ZeroOptions,
} from './device.js';
import { BlockError, BlockErrorCode, fromSystemError } from './errors.js';
import { loadNativeFs, type NativeFs } from './native.js';

/**
 * A disk image that is one regular file, byte for byte (QEMU's `raw` format). Thin images are
 * sparse: unwritten ranges are holes and cost nothing. Thick images have every block allocated at
 * creation, and stay so: trim does nothing and zeroing keeps the blocks, so a thick disk can never
 * fail a guest write with ENOSPC because its datastore filled up.
 *
 * All connections share one fd, so one fdatasync covers every write that completed before it
 * (multi-conn safe). FUA is emulated by fdatasync after the write. Extents come from
 * lseek(SEEK_DATA/SEEK_HOLE) through the native addon and never read data.
 */
export type Provisioning = 'thin' | 'thick';

export interface RawFileOptions {
  readonly provisioning: Provisioning;
  readonly isReadOnly?: boolean;
}

/** Largest zero buffer the fallback writes at once: bounds its memory at one buffer per device. */
const ZERO_CHUNK_BYTES = 1024 * 1024;
/** extents() stops after this many runs (the contract allows a prefix; callers ask again). */
const EXTENT_RUNS_MAX = 1024;
/** A run reported as data when the file changes between SEEK_DATA and SEEK_HOLE. */
const RACE_RUN_BYTES = 4096;

const { EOPNOTSUPP, ENOSYS } = os.constants.errno;

const LIMITS: BlockLimits = {
  minimumBytes: 1,
  preferredBytes: 4096,
  maximumBytes: 32 * 1024 * 1024,
  inFlightMax: 64,
};

const openFd = promisify(fs.open);
const closeFd = promisify(fs.close);
const fstatFd = promisify(fs.fstat);
const ftruncateFd = promisify(fs.ftruncate);
const fsyncFd = promisify(fs.fsync);
const fdatasyncFd = promisify(fs.fdatasync);

/**
 * Creates a new raw image of `sizeBytes` at `path`; fails (EIO, cause EEXIST) if the path exists.
 * Thick images get every block allocated, so the file occupies its size. The file and its
 * directory entry are durable when the promise resolves; on failure no file is left behind.
 */
export async function createRawImage(
  path: string,
  sizeBytes: number,
  provisioning: Provisioning,
): Promise<void> {
  assertSafeInteger(sizeBytes, 'raw image size');
  const native = provisioning === 'thick' ? loadNativeFs() : undefined;
  let fd: number;
  try {
    fd = await openFd(path, 'wx');
  } catch (error) {
    throw fromSystemError(error, `create ${path}`);
  }
  let isOpen = true;
  try {
    await ftruncateFd(fd, sizeBytes);
    if (native !== undefined && sizeBytes > 0) await allocateAll(native, fd, sizeBytes);
    await fsyncFd(fd);
    isOpen = false;
    await closeFd(fd);
    await syncDirectory(dirname(path));
  } catch (error) {
    // The first failure is the one to report; cleanup failures would only hide it.
    if (isOpen) await closeFd(fd).catch(() => undefined);
    await unlink(path).catch(() => undefined);
    throw fromSystemError(error, `create ${provisioning} image ${path}`);
  }
}

/**
 * Opens an existing raw image. The device's size is the file's size at open. `provisioning`
 * says how the image was created; it decides whether trim and zeroing may release blocks.
 */
export async function openRawFile(path: string, options: RawFileOptions): Promise<RawFileDevice> {
  const native = loadNativeFs();
  const isReadOnly = options.isReadOnly ?? false;
  let fd: number;
  try {
    fd = await openFd(path, isReadOnly ? 'r' : 'r+');
  } catch (error) {
    throw fromSystemError(error, `open ${path}`);
  }
  try {
    const stats = await fstatFd(fd);
    if (!stats.isFile()) {
      throw new BlockError(BlockErrorCode.EINVAL, `open ${path}: not a regular file`);
    }
    return new RawFileDevice({
      path,
      provisioning: options.provisioning,
      isReadOnly,
      fd,
      sizeBytes: stats.size,
      native,
    });
  } catch (error) {
    // The first failure is the one to report; a close failure would only hide it.
    await closeFd(fd).catch(() => undefined);
    throw fromSystemError(error, `open ${path}`);
  }
}

/** Bytes the file really occupies on disk (st_blocks is in 512-byte units on Linux). */
export async function statAllocatedBytes(path: string): Promise<number> {
  try {
    return (await stat(path)).blocks * 512;
  } catch (error) {
    throw fromSystemError(error, `stat ${path}`);
  }
}

interface RawFileParams {
  readonly path: string;
  readonly provisioning: Provisioning;
  readonly isReadOnly: boolean;
  readonly fd: number;
  readonly sizeBytes: number;
  readonly native: NativeFs;
}

export class RawFileDevice implements BlockDevice {
  readonly path: string;
  readonly provisioning: Provisioning;
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits = LIMITS;
  private readonly fd: number;
  private readonly native: NativeFs;
  /** fallocate modes the filesystem refused with EOPNOTSUPP: not asked again on this open. */
  private readonly unsupportedModes = new Set<number>();
  private zeroChunk: Buffer | undefined;
  private isClosed = false;
  /** False once preadv2(RWF_NOWAIT) was refused as unsupported on this open. */
  private canReadNowait = true;

  /** Use `openRawFile`; it validates the file this takes for granted. */
  constructor(params: RawFileParams) {
    assertSafeInteger(params.sizeBytes, 'raw image size');
    this.path = params.path;
    this.provisioning = params.provisioning;
    this.fd = params.fd;
    this.size = params.sizeBytes;
    this.native = params.native;
    this.caps = {
      isReadOnly: params.isReadOnly,
      canFlush: true,
      fua: 'emulate',
      zero: 'native',
      trim: params.provisioning === 'thin' ? 'native' : 'none',
      canExtents: true,
      isMultiConnSafe: true,
    };
  }

  /**
   * Copies what the page cache holds on the spot (preadv2 RWF_NOWAIT: no thread pool round trip,
   * no waiting for the disk) and reads the rest on the thread pool, looping over short reads; a
   * read that meets end of file (the file shrank) fails EIO.
   */
  read(offset: number, length: number, target?: Buffer): Promise<Buffer> {
    try {
      this.checkOpen();
      assert(target === undefined || target.length === length, 'read target is not length bytes');
      const buffer = target ?? Buffer.allocUnsafe(length);
      const cached = this.readCached(buffer, offset);
      if (cached === length) return Promise.resolve(buffer);
      return this.readRest(buffer, cached, offset);
    } catch (error) {
      // Like every verb, fails by rejecting, never by throwing.
      return Promise.reject(error);
    }
  }

  private async readRest(buffer: Buffer, cached: number, offset: number): Promise<Buffer> {
    const length = buffer.length;
    try {
      await transferAll(
        fs.read,
        this.fd,
        buffer.subarray(cached),
        length - cached,
        offset + cached,
        this.checkOpenNow,
      );
    } catch (error) {
      throw fromSystemError(error, `read ${length} bytes at ${offset} on ${this.path}`);
    }
    return buffer;
  }

  /** Bytes of `buffer` filled from the page cache at `offset` (0 when none, or unsupported). */
  private readCached(buffer: Buffer, offset: number): number {
    if (!this.canReadNowait || buffer.length === 0) return 0;
    const count = this.native.preadNowait(this.fd, buffer, offset);
    if (count >= 0) return count;
    // EAGAIN: not cached, the pool reads it. Anything else: the pool's read reports it; but a
    // file (NFS, FUSE) or kernel without RWF_NOWAIT is not asked again on this open.
    if (count === -EOPNOTSUPP || count === -ENOSYS) this.canReadNowait = false;
    return 0;
  }

  /** Loops over short writes; with `fua`, resolves only after fdatasync. On failure the range is unspecified. */
  async write(offset: number, data: Buffer, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    try {
      await this.writeAll(offset, data, data.length);
      if (options.fua === true) await fdatasyncFd(this.fd);
    } catch (error) {
      throw fromSystemError(error, `write ${data.length} bytes at ${offset} on ${this.path}`);
    }
  }

  /**
   * A thin image with `mayTrim` punches a hole; otherwise the zeros stay allocated. Where the
   * filesystem has no fast way, zero buffers are written, or with `fastOnly` it fails ENOTSUP
   * at once. On failure the range is unspecified.
   */
  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    this.checkWritable();
    const what = `write zeroes at ${offset}+${length} on ${this.path}`;
    try {
      const mayHole = this.provisioning === 'thin' && options.mayTrim === true;
      if (!(await this.zeroFast(offset, length, mayHole))) {
        if (options.fastOnly === true) {
          throw new BlockError(BlockErrorCode.ENOTSUP, `${what}: the filesystem cannot zero fast`);
        }
        await this.writeZeroBuffers(offset, length);
      }
      if (options.fua === true) await fdatasyncFd(this.fd);
    } catch (error) {
      throw fromSystemError(error, what);
    }
  }

  /** Thin: punches a hole (a no-op where the filesystem cannot). Thick: does nothing, by design. */
  async trim(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    if (this.provisioning === 'thick') return;
    const flags = this.native.fallocFlags;
    try {
      const isPunched = await this.tryFallocate(flags.punchHole | flags.keepSize, offset, length);
      if (isPunched && options.fua === true) await fdatasyncFd(this.fd);
    } catch (error) {
      throw fromSystemError(error, `trim at ${offset}+${length} on ${this.path}`);
    }
  }

  /** fdatasync: every write completed before the call, through any connection, is durable. */
  async flush(): Promise<void> {
    this.checkOpen();
    try {
      await fdatasyncFd(this.fd);
    } catch (error) {
      throw fromSystemError(error, `flush ${this.path}`);
    }
  }

  async cache(): Promise<void> {
    this.checkOpen();
  }

  /**
   * Data runs are `data`. What SEEK_HOLE calls a hole is `hole` on a thin image and `zero` on a
   * thick one: a thick image is fully allocated, so its holes are allocated-but-unwritten extents
   * (ext4 and XFS report fallocated extents as holes). Stops after EXTENT_RUNS_MAX runs.
   */
  async extents(offset: number, length: number, runsMax = EXTENT_RUNS_MAX): Promise<Extent[]> {
    this.checkOpen();
    const runsLimit = Math.max(1, Math.min(runsMax, EXTENT_RUNS_MAX));
    const end = Math.min(this.size, offset + length);
    const holeKind: ExtentKind = this.provisioning === 'thin' ? 'hole' : 'zero';
    const runs: Extent[] = [];
    let at = offset;
    try {
      while (at < end && runs.length < runsLimit) {
        if (at > offset) this.checkOpen();
        const dataAt = await this.native.seekData(this.fd, at);
        // -1 (ENXIO): no data from `at` to the end of the file.
        const holeEnd = dataAt < 0 ? end : Math.min(dataAt, end);
        if (holeEnd > at) {
          pushRun(runs, at, holeEnd, holeKind);
          at = holeEnd;
          continue;
        }
        const holeAt = await this.native.seekHole(this.fd, at);
        // At or before `at` (or -1) only if the file changed between the two calls: report a
        // little data, which is never wrong, rather than spin.
        const dataEnd = holeAt > at ? Math.min(holeAt, end) : Math.min(at + RACE_RUN_BYTES, end);
        pushRun(runs, at, dataEnd, 'data');
        at = dataEnd;
      }
    } catch (error) {
      throw fromSystemError(error, `map extents at ${offset} on ${this.path}`);
    }
    return runs;
  }

  /**
   * Allocates every block of the image that is not yet (holes become allocated zeros; data stays
   * as it is): a thick image made thin at first. False where the file system cannot, in which
   * case nothing changed (writing zeros here would overwrite data).
   */
  async allocate(): Promise<boolean> {
    this.checkWritable();
    if (this.size === 0) return true;
    try {
      return await this.tryFallocate(0, 0, this.size);
    } catch (error) {
      throw fromSystemError(error, `allocate ${this.path}`);
    }
  }

  /**
   * Makes `[offset, offset+length)` of `target` share this image's extents (FICLONERANGE, a
   * reflink): no data moves. Resolves false, without touching `target`, where the kernel cannot
   * for these two files (other file systems: EXDEV; no shared extents: EOPNOTSUPP; a range not
   * in whole blocks: EINVAL). Other failures reject as a write would.
   */
  async cloneRangeTo(target: RawFileDevice, offset: number, length: number): Promise<boolean> {
    return this.inKernel(target, offset, length, 'clone', async () => {
      await this.native.cloneRange(this.fd, offset, target.fd, offset, length);
    });
  }

  /**
   * Copies `[offset, offset+length)` to the same range of `target` with copy_file_range: the
   * kernel moves the data (and may itself share extents), none of it crosses into JavaScript.
   * Resolves false where the kernel refuses these two files (EXDEV, EOPNOTSUPP, EINVAL, ENOSYS);
   * other failures reject as a write would. A source that ends early fails EIO, as `read` does.
   */
  async copyRangeTo(target: RawFileDevice, offset: number, length: number): Promise<boolean> {
    return this.inKernel(target, offset, length, 'copy', async () => {
      const moved = await this.native.copyRange(this.fd, offset, target.fd, offset, length);
      if (moved < length) {
        throw new BlockError(BlockErrorCode.EIO, `unexpected end of file at ${offset + moved}`);
      }
    });
  }

  private async inKernel(
    target: RawFileDevice,
    offset: number,
    length: number,
    what: 'clone' | 'copy',
    run: () => Promise<void>,
  ): Promise<boolean> {
    this.checkOpen();
    target.checkWritable();
    try {
      await run();
      return true;
    } catch (error) {
      if (isRefusedInKernel(error)) return false;
      throw fromSystemError(
        error,
        `${what} ${length} bytes at ${offset} from ${this.path} to ${target.path}`,
      );
    }
  }

  /**
   * Closes the fd at once; later calls fail ESHUTDOWN. A request already in a system call
   * finishes (or fails EBADF, mapped to ESHUTDOWN); multi-step requests check before each step,
   * so none issues a call on an fd number that may since have been reused.
   */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    try {
      await closeFd(this.fd);
    } catch (error) {
      throw fromSystemError(error, `close ${this.path}`);
    }
  }

  private writeAll(offset: number, data: Buffer, length: number): Promise<void> {
    return transferAll(fs.write, this.fd, data, length, offset, this.checkOpenNow);
  }

  /** Between the steps of one request: the fd must not have been closed (and reused) meanwhile. */
  private readonly checkOpenNow = (): void => this.checkOpen();

  /**
   * Zeroes the range with fallocate; false if the filesystem supports no suitable mode. Order
   * follows QEMU's file-posix: PUNCH_HOLE where a hole is allowed, ZERO_RANGE, and where only
   * punching works but the blocks must stay, punch then allocate again.
   */
  private async zeroFast(offset: number, length: number, mayHole: boolean): Promise<boolean> {
    const flags = this.native.fallocFlags;
    const punch = flags.punchHole | flags.keepSize;
    if (mayHole && (await this.tryFallocate(punch, offset, length))) return true;
    if (await this.tryFallocate(flags.zeroRange | flags.keepSize, offset, length)) return true;
    if (mayHole) return false;
    if (!(await this.tryFallocate(punch, offset, length))) return false;
    return this.tryFallocate(flags.keepSize, offset, length);
  }

  /** fallocate; false (remembered for this open) when the filesystem does not support `mode`. */
  private async tryFallocate(mode: number, offset: number, length: number): Promise<boolean> {
    if (this.unsupportedModes.has(mode)) return false;
    this.checkOpen();
    try {
      await this.native.fallocate(this.fd, mode, offset, length);
      return true;
    } catch (error) {
      if (!isUnsupported(error)) throw error;
      this.unsupportedModes.add(mode);
      return false;
    }
  }

  private async writeZeroBuffers(offset: number, length: number): Promise<void> {
    this.zeroChunk ??= Buffer.alloc(ZERO_CHUNK_BYTES);
    for (let at = offset; at < offset + length; at += ZERO_CHUNK_BYTES) {
      this.checkOpen();
      await this.writeAll(at, this.zeroChunk, Math.min(ZERO_CHUNK_BYTES, offset + length - at));
    }
  }

  private checkOpen(): void {
    if (this.isClosed) {
      throw new BlockError(BlockErrorCode.ESHUTDOWN, `raw image ${this.path} is closed`);
    }
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.caps.isReadOnly) {
      throw new BlockError(BlockErrorCode.EPERM, `raw image ${this.path} is read-only`);
    }
  }
}

/** Appends [start, end) to `runs`, merging with the last run when it is of the same kind. */
function pushRun(runs: Extent[], start: number, end: number, kind: ExtentKind): void {
  const last = runs[runs.length - 1];
  if (last !== undefined && last.kind === kind && last.offset + last.length === start) {
    runs[runs.length - 1] = { offset: last.offset, length: end - last.offset, kind };
  } else {
    runs.push({ offset: start, length: end - start, kind });
  }
}

/** Allocates every block of a new thick image; where fallocate is unsupported, writes zeros. */
async function allocateAll(native: NativeFs, fd: number, sizeBytes: number): Promise<void> {
  try {
    await native.fallocate(fd, 0, 0, sizeBytes);
    return;
  } catch (error) {
    if (!isUnsupported(error)) throw error;
  }
  const zeros = Buffer.alloc(Math.min(ZERO_CHUNK_BYTES, sizeBytes));
  for (let at = 0; at < sizeBytes; at += zeros.length) {
    await transferAll(fs.write, fd, zeros, Math.min(zeros.length, sizeBytes - at), at);
  }
}

/** fsync of the directory makes a new entry in it durable (POSIX leaves that to the caller). */
async function syncDirectory(path: string): Promise<void> {
  const handle = await openHandle(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * The kernel will not copy between these two files inside itself: different file systems, none
 * that shares extents, a range it cannot clone, or no such system call. Not an I/O failure.
 */
function isRefusedInKernel(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return isUnsupported(error) || code === 'EXDEV' || code === 'EINVAL' || code === 'ENOTTY';
}

/** The filesystem or kernel lacks the operation (as opposed to failing it). */
function isUnsupported(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === 'EOPNOTSUPP' || code === 'ENOTSUP' || code === 'ENOSYS';
}

type Transfer = (
  fd: number,
  buffer: Buffer,
  at: number,
  length: number,
  position: number,
  done: (error: NodeJS.ErrnoException | null, count: number) => void,
) => void;

/**
 * Moves `length` bytes between `buffer` (from its start) and the file at `position` with fs.read
 * or fs.write, repeating after short transfers; `beforeRepeat` runs before each repeat. A
 * transfer of zero bytes fails EIO: end of file for a read, no progress for a write.
 */
async function transferAll(
  transfer: Transfer,
  fd: number,
  buffer: Buffer,
  length: number,
  position: number,
  beforeRepeat?: () => void,
): Promise<void> {
  let done = 0;
  while (done < length) {
    if (done > 0) beforeRepeat?.();
    const count = await transferAt(transfer, fd, buffer, done, length - done, position + done);
    if (count === 0) {
      const what = transfer === fs.read ? 'unexpected end of file' : 'write made no progress';
      throw new BlockError(BlockErrorCode.EIO, `${what} at ${position + done}`);
    }
    done += count;
  }
}

// The callback fs API wrapped by hand: fs.read's promisified form allocates a result object per
// call, and FileHandle adds a layer per request; this runs once per guest read or write.
function transferAt(
  transfer: Transfer,
  fd: number,
  buffer: Buffer,
  at: number,
  length: number,
  position: number,
): Promise<number> {
  return new Promise((resolve, reject) => {
    transfer(fd, buffer, at, length, position, (error, count) => {
      if (error) reject(error);
      else resolve(count);
    });
  });
}
