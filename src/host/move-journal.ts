import { mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { isTemporaryName, readJson, syncDirectory, writeJsonAtomic } from './atomic-file.js';
import { CommitMark } from './commit-mark.js';

/**
 * The journal of moves in progress: one small JSON file per move under `<data>/journal/`,
 * written (atomically, durably) before the move creates anything, updated when it creates a redo
 * log and at its commit, and deleted only after the move's cleanup is complete. An agent that
 * starts after a crash reads what is left and finishes each move one way or the other
 * (DESIGN.md, "Authority and crash safety").
 *
 * A move carries one or more disks and, for a VM, its home directory. What decides is the record's
 * `committed` flag, set by one atomic rewrite of the record once every destination descriptor and
 * the new home are written: that write is the commit point, for one disk as for a VM's several,
 * so the disks go over together or not at all. A move inside one host commits instead by setting
 * its commit mark (`<id>.commit`, commit-mark.ts: one sector written in place, one fdatasync),
 * which `list` reads as the flag: cheap enough for the guest's stun. Records of version 1 (one disk, no flag) are still
 * read; for them the destination descriptor's generation decides, as it did when they were written.
 */
export const JOURNAL_VERSION = 2;
const JOURNAL_VERSION_SINGLE_DISK = 1;

/** One disk of a move. */
export interface MoveDiskRecord {
  readonly disk: string;
  /** The datastore the disk is moved from (a VM's disks may live in several). */
  readonly from: string;
  /** The source descriptor's generation; the commit writes `generation + 1` at the destination. */
  readonly generation: number;
  /** The source image's file name (in the source datastore). */
  readonly sourceImage: string;
  /** File names in the destination datastore: the new image, then redo logs in creation order. */
  readonly image: string;
  readonly redoLogs: readonly string[];
}

export interface MoveRecord {
  readonly version: typeof JOURNAL_VERSION;
  readonly id: string;
  /** The VM whose home moves with the disks, or null for a disk move. */
  readonly vm: string | null;
  /** The datastore the VM's home is moved from; null for a disk move. */
  readonly homeFrom: string | null;
  /** The destination datastore. */
  readonly to: string;
  readonly disks: readonly MoveDiskRecord[];
  /**
   * True once the move committed (every destination is the authority); false before. Null only
   * for a version 1 record: the destination descriptor's generation decides.
   */
  readonly committed: boolean | null;
  readonly method: string;
  readonly startedAt: string;
  /**
   * A cross-host move (issue 7): the peer host the disk goes to (`to` is a datastore there), and
   * whether the commit was asked of it. Absent or null for a move inside this host. Redo logs of
   * a cross-host move are in the disk's own datastore (`from`), since the destination's is not
   * this host's.
   */
  readonly toHost?: string | null;
  /**
   * Written true, durably, before the commit is asked of the peer: until then the peer cannot
   * have committed, so recovery needs no answer from it. After, only the peer knows.
   */
  readonly commitRequested?: boolean;
}

const JOURNAL_DIR = 'journal';

export class MoveJournal {
  private readonly dir: string;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /**
   * Opens the journal of the agent that holds the data dir's lock; deletes what a write cut
   * short by a crash left (temporary files: a record or copy state is replaced whole or not at
   * all, so they hold nothing the journal needs).
   */
  static async open(dataDir: string): Promise<MoveJournal> {
    const dir = join(dataDir, JOURNAL_DIR);
    await mkdir(dir, { recursive: true });
    for (const fileName of await readdir(dir)) {
      if (isTemporaryName(fileName)) await unlink(join(dir, fileName));
    }
    return new MoveJournal(dir);
  }

  async write(record: MoveRecord): Promise<void> {
    await writeJsonAtomic(this.pathOf(record.id), record);
  }

  /** Creates move `id`'s commit mark, unset; setting it later commits the move. */
  createCommitMark(id: string): Promise<CommitMark> {
    return CommitMark.create(this.markPathOf(id), id);
  }

  /**
   * Deletes move `id`'s commit mark, which must be unset (`list` read the record uncommitted): a
   * resumed move creates a fresh one.
   */
  async removeCommitMark(id: string): Promise<void> {
    try {
      await unlink(this.markPathOf(id));
    } catch (error) {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
    }
    await syncDirectory(this.dir);
  }

  async remove(id: string): Promise<void> {
    for (const path of [this.pathOf(id), this.markPathOf(id), this.copyStatePathOf(id)]) {
      try {
        await unlink(path);
      } catch (error) {
        if (errorCodeOf(error) !== 'ENOENT') throw error;
      }
    }
    await syncDirectory(this.dir);
  }

  /** Every record left, oldest first; unreadable ones come back as problems, never thrown. */
  async list(): Promise<{ records: MoveRecord[]; problems: string[] }> {
    const records: MoveRecord[] = [];
    const problems: string[] = [];
    for (const fileName of (await readdir(this.dir)).sort()) {
      if (!fileName.endsWith('.json') || fileName.startsWith('.')) continue;
      const path = join(this.dir, fileName);
      try {
        const record = parseRecord(await readJson(path), path);
        const isMarked =
          record.committed === false &&
          (await CommitMark.isSet(this.markPathOf(record.id), record.id));
        records.push(isMarked ? { ...record, committed: true } : record);
      } catch (error) {
        problems.push(
          `journal entry ${path} is unreadable and left alone: ${errorMessageOf(error)}`,
        );
      }
    }
    records.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
    return { records, problems };
  }

  /** Move `id`'s persisted copy state (copy-state-file.ts), removed with the record. */
  copyStatePathOf(id: string): string {
    return join(this.dir, `${id}.bitmap`);
  }

  private pathOf(id: string): string {
    return join(this.dir, `${id}.json`);
  }

  private markPathOf(id: string): string {
    return join(this.dir, `${id}.commit`);
  }
}

function parseRecord(value: unknown, path: string): MoveRecord {
  const loose = value as Record<string, unknown> | null;
  if (
    loose !== null &&
    typeof loose === 'object' &&
    loose.version === JOURNAL_VERSION_SINGLE_DISK
  ) {
    return fromSingleDisk(loose, path);
  }
  const record = value as Partial<MoveRecord> | null;
  const disks = record?.disks;
  const isDisks = Array.isArray(disks) && disks.length > 0 && disks.every(isDiskRecord);
  if (
    record === null ||
    typeof record !== 'object' ||
    record.version !== JOURNAL_VERSION ||
    !isText(record.id) ||
    !isText(record.to) ||
    !(record.vm === null || isText(record.vm)) ||
    !(record.homeFrom === null || isText(record.homeFrom)) ||
    (record.vm === null) !== (record.homeFrom === null) ||
    typeof record.committed !== 'boolean' ||
    !(record.toHost === undefined || record.toHost === null || isText(record.toHost)) ||
    !(record.commitRequested === undefined || typeof record.commitRequested === 'boolean') ||
    !isDisks
  ) {
    throw new Error(`${path} is not a version ${JOURNAL_VERSION} move record`);
  }
  return record as MoveRecord;
}

/** A version 1 record (one disk, written before the commit flag existed) in today's shape. */
function fromSingleDisk(record: Record<string, unknown>, path: string): MoveRecord {
  const disk = { ...record, disk: record.disk, from: record.from };
  if (!isText(record.id) || !isText(record.to) || !isDiskRecord(disk)) {
    throw new Error(`${path} is not a version ${JOURNAL_VERSION_SINGLE_DISK} move record`);
  }
  return {
    version: JOURNAL_VERSION,
    id: record.id,
    vm: null,
    homeFrom: null,
    to: record.to,
    disks: [
      {
        disk: disk.disk,
        from: disk.from,
        generation: disk.generation,
        sourceImage: disk.sourceImage,
        image: disk.image,
        redoLogs: disk.redoLogs,
      },
    ],
    committed: null,
    method: typeof record.method === 'string' ? record.method : 'unknown',
    startedAt: typeof record.startedAt === 'string' ? record.startedAt : '',
  };
}

function isDiskRecord(value: unknown): value is MoveDiskRecord {
  const disk = value as Partial<MoveDiskRecord> | null;
  return (
    disk !== null &&
    typeof disk === 'object' &&
    isText(disk.disk) &&
    isText(disk.from) &&
    isText(disk.image) &&
    isText(disk.sourceImage) &&
    Number.isSafeInteger(disk.generation) &&
    Array.isArray(disk.redoLogs) &&
    disk.redoLogs.every(isText)
  );
}

function isText(field: unknown): field is string {
  return typeof field === 'string' && field.length > 0;
}
