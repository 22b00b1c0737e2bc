import { mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { readJson, syncDirectory, writeJsonAtomic } from './atomic-file.js';

/**
 * The journal of disk moves in progress: one small JSON file per move under `<data>/journal/`,
 * written (atomically, durably) before the move creates anything, updated when it creates a redo
 * log, and deleted only after the move's cleanup is complete. An agent that starts after a crash
 * reads what is left and finishes each move one way or the other (DESIGN.md, "Authority and crash
 * safety"): the destination's descriptor, written at the commit with a higher generation, says
 * which way.
 */
export const JOURNAL_VERSION = 1;

export interface MoveRecord {
  readonly version: typeof JOURNAL_VERSION;
  readonly id: string;
  readonly disk: string;
  /** Source and destination datastore names. */
  readonly from: string;
  readonly to: string;
  /** The source descriptor's generation; the commit writes `generation + 1` at the destination. */
  readonly generation: number;
  /** The source image's file name (in the source datastore). */
  readonly sourceImage: string;
  /** File names in the destination datastore: the new image, then redo logs in creation order. */
  readonly image: string;
  readonly redoLogs: readonly string[];
  readonly method: string;
  readonly startedAt: string;
}

const JOURNAL_DIR = 'journal';

export class MoveJournal {
  private readonly dir: string;

  private constructor(dir: string) {
    this.dir = dir;
  }

  static async open(dataDir: string): Promise<MoveJournal> {
    const dir = join(dataDir, JOURNAL_DIR);
    await mkdir(dir, { recursive: true });
    return new MoveJournal(dir);
  }

  async write(record: MoveRecord): Promise<void> {
    await writeJsonAtomic(this.pathOf(record.id), record);
  }

  async remove(id: string): Promise<void> {
    try {
      await unlink(this.pathOf(id));
    } catch (error) {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
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
        records.push(parseRecord(await readJson(path), path));
      } catch (error) {
        problems.push(
          `journal entry ${path} is unreadable and left alone: ${errorMessageOf(error)}`,
        );
      }
    }
    records.sort((a, b) => a.startedAt.localeCompare(b.startedAt));
    return { records, problems };
  }

  private pathOf(id: string): string {
    return join(this.dir, `${id}.json`);
  }
}

function parseRecord(value: unknown, path: string): MoveRecord {
  const record = value as Partial<MoveRecord> | null;
  const isText = (field: unknown): field is string => typeof field === 'string' && field.length > 0;
  if (
    record === null ||
    typeof record !== 'object' ||
    record.version !== JOURNAL_VERSION ||
    !isText(record.id) ||
    !isText(record.disk) ||
    !isText(record.from) ||
    !isText(record.to) ||
    !isText(record.image) ||
    !isText(record.sourceImage) ||
    !Number.isSafeInteger(record.generation) ||
    !Array.isArray(record.redoLogs) ||
    !record.redoLogs.every(isText)
  ) {
    throw new Error(`${path} is not a version ${JOURNAL_VERSION} move record`);
  }
  return record as MoveRecord;
}
