import * as fs from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { promisify } from 'node:util';
import { syncDirectory } from './atomic-file.js';

// Plain fds, not FileHandles: the fd stays open across the move, and a FileHandle that the
// garbage collector finds unreferenced is closed under us.
const openFd = promisify(fs.open);
const writeFd = promisify(fs.write);
const fsyncFd = promisify(fs.fsync);
const closeFd = promisify(fs.close);

/**
 * The commit point of a move inside one host, made cheap enough to sit in the guest's stun: a
 * small file created with the move's journal record (allocated, zero-filled and durable before
 * the copy starts), whose first sector is written once, at the commit, and made durable with one
 * fdatasync. Rewriting the journal record instead (a new file, its fsync, a rename, the
 * directory's fsync) costs two journal commits of the file system: about 2 ms on this kind of
 * disk, against a fraction of one for an overwrite in place of a block that is already allocated,
 * which needs no metadata at all.
 *
 * A sector is written whole or not at all by the disks and file systems Ferry runs on; and the
 * mark is compared byte for byte with what the move writes (its id inside), so a sector that is
 * anything else, zeros or a torn write, reads as "not committed", which is the truth: the guest
 * is released only after `set` resolved.
 */
const SECTOR_BYTES = 512;
/** One file-system block: the sector is overwritten in place inside it. */
const FILE_BYTES = 4096;

export class CommitMark {
  private isClosed = false;

  private constructor(
    private readonly fd: number,
    private readonly bytes: Buffer,
  ) {}

  /** Creates the mark file for move `id`, unset and durable (directory entry included). */
  static async create(path: string, id: string): Promise<CommitMark> {
    const fd = await openFd(path, 'wx+');
    try {
      await writeFd(fd, Buffer.alloc(FILE_BYTES), 0, FILE_BYTES, 0);
      await fsyncFd(fd);
      await syncDirectory(dirname(path));
    } catch (error) {
      await closeFd(fd).catch(() => undefined);
      throw error;
    }
    // Kept open until the move ends: the commit is then one write and one fdatasync.
    return new CommitMark(fd, markOf(id));
  }

  /** True when the file at `path` holds move `id`'s mark; false when absent or anything else. */
  static async isSet(path: string, id: string): Promise<boolean> {
    let data: Buffer;
    try {
      data = await readFile(path);
    } catch {
      return false;
    }
    return data.subarray(0, SECTOR_BYTES).equals(markOf(id));
  }

  /** The commit: the mark written in place and durable when this resolves. */
  set(): Promise<void> {
    return new Promise((resolve, reject) => {
      fs.write(this.fd, this.bytes, 0, SECTOR_BYTES, 0, (error) => {
        if (error) return reject(error);
        fs.fdatasync(this.fd, (syncError) => (syncError ? reject(syncError) : resolve()));
      });
    });
  }

  /** Closes the file (the mark stays as it is); safe to call more than once. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await closeFd(this.fd).catch(() => undefined);
  }
}

/** The sector a set mark holds: a header and the move's id, zero-padded. */
function markOf(id: string): Buffer {
  const sector = Buffer.alloc(SECTOR_BYTES);
  sector.write(`ferry move committed\n${id}\n`, 'utf8');
  return sector;
}
