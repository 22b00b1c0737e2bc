import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { FerryError } from '../util/errors.js';

/**
 * Typed access to `native/ferry_native.c`: lseek(SEEK_DATA/SEEK_HOLE), fallocate,
 * copy_file_range and FICLONERANGE, which Node lacks and the raw image backend needs for extents,
 * holes, thick allocation and copies that stay in the kernel, and the page-cache read of the
 * serving path's fast path. Every call but `preadNowait` (which cannot wait for I/O) runs on the
 * libuv pool and returns a promise; a failure rejects with an Error carrying `code` (errno
 * name such as 'ENOSPC', 'EOPNOTSUPP'), a negated `errno` and `syscall`, the shape of Node's own fs
 * errors, so `fromSystemError` maps it.
 *
 * The addon is loaded on first use rather than at import, so a process that never opens a raw
 * image (a CLI talking to the API, say) starts even where the addon was not built.
 */

/** fallocate(2) mode bits, as the running kernel's headers define them. */
export interface FallocFlags {
  /** Do not change the file size, even when the range ends past it. */
  readonly keepSize: number;
  /** Deallocate the range (it reads as zeros); must be combined with `keepSize`. */
  readonly punchHole: number;
  /** Make the range read as zeros, keeping (or creating) its allocation. */
  readonly zeroRange: number;
}

export interface NativeFs {
  readonly fallocFlags: FallocFlags;
  /** The first data offset at or after `offset`, or -1 when none (ENXIO). */
  seekData(fd: number, offset: number): Promise<number>;
  /** The first hole offset at or after `offset` (EOF counts as a hole), or -1 past EOF (ENXIO). */
  seekHole(fd: number, offset: number): Promise<number>;
  /** fallocate(fd, mode, offset, length); `length` must be positive. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /**
   * copy_file_range(2) of `length` bytes, looping over short copies; resolves with the bytes
   * moved, fewer than `length` only where the source file ends.
   */
  copyRange(
    fdIn: number,
    offsetIn: number,
    fdOut: number,
    offsetOut: number,
    length: number,
  ): Promise<number>;
  /** ioctl(FICLONERANGE): the target range shares the source's extents (a reflink). */
  cloneRange(
    fdIn: number,
    offsetIn: number,
    fdOut: number,
    offsetOut: number,
    length: number,
  ): Promise<void>;
  /**
   * Synchronous preadv2(RWF_NOWAIT) into `buffer` (from its start, up to its length) at
   * `offset`: copies only what the page cache holds and never waits for the disk, so it may run
   * on the event loop. Returns the bytes read (short when only a prefix is cached), or a negated
   * errno: -EAGAIN when nothing is cached, -EOPNOTSUPP (or -ENOSYS) where RWF_NOWAIT is not
   * supported. The caller reads what is left on the thread pool, which also reports real errors.
   */
  preadNowait(fd: number, buffer: Buffer, offset: number): number;
}

/** The addon is absent or unloadable: a build problem, not an I/O error, so not a BlockError. */
export class NativeAddonError extends FerryError<'ERR_FERRY_NATIVE_ADDON'> {
  override readonly name = 'NativeAddonError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_FERRY_NATIVE_ADDON', message, options);
  }
}

/** Exactly what `ferry_native.c` exports. */
interface Addon {
  seekData(fd: number, offset: number): Promise<number>;
  seekHole(fd: number, offset: number): Promise<number>;
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<undefined>;
  copyRange(fdIn: number, at: number, fdOut: number, to: number, length: number): Promise<number>;
  cloneRange(
    fdIn: number,
    at: number,
    fdOut: number,
    to: number,
    length: number,
  ): Promise<undefined>;
  preadNowait(fd: number, buffer: Buffer, offset: number): number;
  readonly FALLOC_FL_KEEP_SIZE: number;
  readonly FALLOC_FL_PUNCH_HOLE: number;
  readonly FALLOC_FL_ZERO_RANGE: number;
}

/**
 * This module compiles to dist/src/block/native.js and the addon builds into
 * native/build/Release, so the repository root is three levels up from here.
 */
const ADDON_URL = new URL('../../../native/build/Release/ferry_native.node', import.meta.url);

let loaded: NativeFs | undefined;

/** Loads the addon once; throws `NativeAddonError` saying how to build it when it is missing. */
export function loadNativeFs(): NativeFs {
  loaded ??= wrap(requireAddon());
  return loaded;
}

function requireAddon(): Addon {
  const path = fileURLToPath(ADDON_URL);
  try {
    return createRequire(import.meta.url)(path) as Addon;
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new NativeAddonError(
      `cannot load the ferry_native addon from ${path} (${reason}); ` +
        'run `npm install` in the repository root, which builds it with node-gyp',
      { cause: error },
    );
  }
}

function wrap(addon: Addon): NativeFs {
  for (const name of [
    'seekData',
    'seekHole',
    'fallocate',
    'copyRange',
    'cloneRange',
    'preadNowait',
  ] as const) {
    if (typeof addon[name] !== 'function') {
      throw new NativeAddonError(
        `the ferry_native addon lacks ${name}(); rebuild it with npm install`,
      );
    }
  }
  return {
    fallocFlags: {
      keepSize: addon.FALLOC_FL_KEEP_SIZE,
      punchHole: addon.FALLOC_FL_PUNCH_HOLE,
      zeroRange: addon.FALLOC_FL_ZERO_RANGE,
    },
    // async, so a refused argument (the addon throws a RangeError at once) rejects like the rest.
    seekData: async (fd, offset) => addon.seekData(fd, offset),
    seekHole: async (fd, offset) => addon.seekHole(fd, offset),
    fallocate: async (fd, mode, offset, length) => {
      await addon.fallocate(fd, mode, offset, length);
    },
    copyRange: async (fdIn, offsetIn, fdOut, offsetOut, length) =>
      addon.copyRange(fdIn, offsetIn, fdOut, offsetOut, length),
    cloneRange: async (fdIn, offsetIn, fdOut, offsetOut, length) => {
      await addon.cloneRange(fdIn, offsetIn, fdOut, offsetOut, length);
    },
    preadNowait: addon.preadNowait,
  };
}
