import { randomBytes } from 'node:crypto';
import { open, readFile, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { HostError, HostErrorCode } from './errors.js';

/**
 * Whole-file replacement that a crash cannot tear (DESIGN.md, "Authority and crash safety"):
 * write a temporary file in the same directory, fsync it, rename it over the target, fsync the
 * directory. After a crash the target holds either the old or the new contents, never a mix,
 * and once this resolves the new contents survive power loss.
 *
 * The temporary name starts with '.', which names.ts refuses for disks and datastores, so a
 * leftover temporary never shadows a real file; `isTemporaryName` lets a directory scan skip it.
 */
const TEMP_MARK = '.tmp-';

export function isTemporaryName(fileName: string): boolean {
  return fileName.startsWith('.') && fileName.includes(TEMP_MARK);
}

/**
 * Replaces `path` with `data`. On failure the target is untouched and the temporary file is
 * removed (best effort: a leftover is harmless, see above). `modeBits` applies from the first
 * byte written (0o600 for a secret: it is never readable by others, not even while temporary).
 */
export async function writeFileAtomic(
  path: string,
  data: string | Buffer,
  modeBits = 0o644,
): Promise<void> {
  const dir = dirname(path);
  const tempPath = join(
    dir,
    `.${basename(path)}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`,
  );
  try {
    const handle = await open(tempPath, 'wx', modeBits);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tempPath, path);
  } catch (error) {
    await unlink(tempPath).catch(() => undefined);
    throw error;
  }
  await syncDirectory(dir);
}

/** `writeFileAtomic` of `value` as indented JSON with a final newline (for people who look). */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  await writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`);
}

/**
 * Reads and parses a JSON file. File system errors (`ENOENT`, ...) pass through unchanged so the
 * caller can tell "absent" from "broken"; unparsable contents throw `ERR_BAD_DESCRIPTOR` naming
 * the file.
 */
export async function readJson(path: string): Promise<unknown> {
  const text = await readFile(path, 'utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new HostError(
      HostErrorCode.BadDescriptor,
      `${path}: not valid JSON (${errorMessageOf(error)})`,
      {
        cause: error,
      },
    );
  }
}

/** Makes a rename or unlink in `dir` durable. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } catch (error) {
    // Some file systems (certain FUSE and network mounts) refuse fsync on a directory; there
    // the rename is as durable as that file system makes it, and failing would help no one.
    if (errorCodeOf(error) !== 'EINVAL' && errorCodeOf(error) !== 'ENOTSUP') throw error;
  } finally {
    await handle.close();
  }
}
