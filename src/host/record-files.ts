import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { readJson, syncDirectory } from './atomic-file.js';

/**
 * Settles, at start, the records an interrupted operation left in `dir` (one JSON file each,
 * written atomically: the receives of disks and VMs). `settle` does what a record's state says
 * and returns the message for the operator; the file is then deleted. A record that cannot be
 * settled now is left where it is, with a message saying why, for the next start.
 */
export async function settleRecordFiles<T>(
  dir: string,
  what: string,
  log: Logger,
  settle: (record: T) => Promise<string>,
): Promise<string[]> {
  const messages: string[] = [];
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT') return messages;
    throw error;
  }
  for (const fileName of names.filter((name) => name.endsWith('.json') && !name.startsWith('.'))) {
    const path = join(dir, fileName);
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
  await syncDirectory(dir).catch(() => undefined);
  return messages;
}
