import { mkdir, readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { readJson, syncDirectory, writeJsonAtomic } from './atomic-file.js';

/**
 * The records of operations under way, one JSON file each in a directory (the receives of disks
 * and VMs, receiver.ts and vm-receiver.ts): written atomically before the operation acts,
 * rewritten at its steps, deleted durably when it is over; and at start, what an interrupted
 * operation left is settled (`settle`).
 */
export class RecordFiles<T extends { readonly id: string }> {
  constructor(private readonly dir: string) {}

  async write(record: T): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    await writeJsonAtomic(this.pathOf(record.id), record);
  }

  /** Record `id`, or undefined if there is none. */
  async read(id: string): Promise<T | undefined> {
    try {
      return (await readJson(this.pathOf(id))) as T;
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') return undefined;
      throw error;
    }
  }

  /** Deletes record `id`, durably; one already gone is fine. */
  async remove(id: string): Promise<void> {
    await unlink(this.pathOf(id)).catch((error: unknown) => {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
    });
    await syncDirectory(this.dir);
  }

  /**
   * Settles each record left: `settle` does what its state says and returns the message for the
   * operator; the file is then deleted. A record that cannot be settled now is left where it
   * is, with a message saying why, for the next start.
   */
  async settle(
    what: string,
    log: Logger,
    settle: (record: T) => Promise<string>,
  ): Promise<string[]> {
    const messages: string[] = [];
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') return messages;
      throw error;
    }
    for (const fileName of names.filter(
      (name) => name.endsWith('.json') && !name.startsWith('.'),
    )) {
      const path = join(this.dir, fileName);
      try {
        const message = await settle((await readJson(path)) as T);
        await unlink(path);
        log.warn({ file: path }, message);
        messages.push(message);
      } catch (error) {
        const message = `${what} record ${path} cannot be resolved now and is left: ${errorMessageOf(error)}`;
        log.error({ file: path, err: error }, message);
        messages.push(message);
      }
    }
    await syncDirectory(this.dir).catch(() => undefined);
    return messages;
  }

  private pathOf(id: string): string {
    return join(this.dir, `${id}.json`);
  }
}
