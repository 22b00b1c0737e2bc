import { readFile, realpath, writeFile } from 'node:fs/promises';
import { runCommand } from './children.js';

/** What the migration benchmark asks of the machine: the page cache, and what a path lives on. */

const SYNC_TIMEOUT_MS = 300_000;

/**
 * Writes back every dirty page (`sync`), then drops the page cache, dentries and inodes, so the
 * next copy reads from the disk. Resolves false, changing nothing else, when the kernel refuses
 * (not root, or a container without a writable /proc/sys).
 */
export async function dropCaches(): Promise<boolean> {
  await runCommand('sync', 'sync', [], { timeoutMs: SYNC_TIMEOUT_MS });
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    // EACCES or EROFS: the runs go warm, and the report says so.
    return false;
  }
}

/** The file system type (`ext4`, `tmpfs`, ...) of the mount holding `path`, from mountinfo. */
export async function filesystemTypeOf(path: string): Promise<string> {
  const real = await realpath(path);
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  let best = { mountPoint: '', type: 'unknown' };
  for (const line of mountinfo.split('\n')) {
    // "36 35 98:0 /root /mnt rw,noatime shared:1 - ext4 /dev/vda rw": the 5th field is the
    // mount point (octal escapes for spaces), the first field after " - " the type.
    const [left, right] = line.split(' - ');
    const mountPoint = left
      ?.split(' ')[4]
      ?.replace(/\\(\d{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
    const type = right?.split(' ')[0];
    if (mountPoint === undefined || type === undefined) continue;
    const isUnder =
      real === mountPoint || real.startsWith(mountPoint === '/' ? '/' : `${mountPoint}/`);
    if (isUnder && mountPoint.length >= best.mountPoint.length) best = { mountPoint, type };
  }
  return best.type;
}
