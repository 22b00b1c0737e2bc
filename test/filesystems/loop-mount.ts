import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

/**
 * A real file system of the kind the datastore may sit on, made for a test: a sparse image file
 * formatted with Debian's mkfs (e2fsprogs, xfsprogs, btrfs-progs) and loop-mounted (root only;
 * CI runs as root and `.ci/run` installs the tools). The test's directories go inside it, so
 * what the kernel does for that file system (reflinks on XFS and Btrfs, copy_file_range's
 * splice on ext4, ENOSPC on a small one) is what the code under test meets.
 */
export type FileSystemType = 'ext4' | 'xfs' | 'btrfs';

export const FILE_SYSTEM_TYPES: readonly FileSystemType[] = ['ext4', 'xfs', 'btrfs'];

export interface LoopMount {
  readonly type: FileSystemType;
  /** Where it is mounted: an empty directory owned by root. */
  readonly path: string;
  /** Unmounts (the loop device goes with it) and deletes the image. */
  unmount(): Promise<void>;
}

const run = promisify(execFile);

/** mkfs arguments: quiet, forced over the image file; XFS with reflinks asked for, not assumed. */
const MKFS: Record<FileSystemType, readonly string[]> = {
  ext4: ['mkfs.ext4', '-q', '-F'],
  xfs: ['mkfs.xfs', '-q', '-f', '-m', 'reflink=1'],
  btrfs: ['mkfs.btrfs', '-q', '-f'],
};

/** `sizeBytes` is the file system's size; the image is sparse, so it costs what is written. */
export async function mountLoopFs(type: FileSystemType, sizeBytes: number): Promise<LoopMount> {
  const dir = await mkdtemp(join(tmpdir(), `ferry-${type}-`));
  const image = join(dir, `${type}.img`);
  const path = join(dir, 'mnt');
  await mkdir(path);
  await writeFile(image, '');
  await truncate(image, sizeBytes);
  const [mkfs, ...args] = MKFS[type];
  try {
    await run(mkfs as string, [...args, image]);
    await run('mount', ['-o', 'loop', image, path]);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw new Error(
      `cannot make a ${type} file system for the test (run as root, with ${mkfs} installed): ` +
        `${(error as Error).message}`,
    );
  }
  let isMounted = true;
  return {
    type,
    path,
    unmount: async () => {
      if (isMounted) {
        isMounted = false;
        await run('umount', [path]).catch(async () => {
          // Busy for a moment after a child exits: detach lazily rather than leak the mount.
          await run('umount', ['-l', path]);
        });
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
