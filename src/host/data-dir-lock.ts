import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf } from '../util/errors.js';
import { HostError, HostErrorCode } from './errors.js';

/**
 * One agent per data directory: two agents serving the same descriptors would each believe
 * they hold the authority for the same disks. The lock is a file created with O_EXCL holding
 * the owner's pid; a lock whose process is gone (the agent was killed) is taken over.
 */
export const LOCK_FILE = 'agent.lock';

export class DataDirLock {
  private readonly path: string;
  private isHeld = true;

  private constructor(path: string) {
    this.path = path;
  }

  /** Takes the lock of `dataDir`, or throws `ERR_DATA_DIR_LOCKED` naming the holder. */
  static async acquire(dataDir: string): Promise<DataDirLock> {
    const path = join(dataDir, LOCK_FILE);
    // Two rounds: the second follows the removal of a stale lock.
    for (let round = 0; round < 2; round += 1) {
      try {
        const handle = await open(path, 'wx', 0o644);
        await handle.writeFile(`${process.pid}\n`);
        await handle.close();
        return new DataDirLock(path);
      } catch (error) {
        if (errorCodeOf(error) !== 'EEXIST') throw error;
      }
      const holder = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
      if (Number.isSafeInteger(holder) && isAlive(holder)) {
        throw new HostError(
          HostErrorCode.Locked,
          `data directory ${dataDir} is in use by process ${holder} (another ferry serve?); ` +
            `if no Ferry runs there, delete ${path}`,
        );
      }
      await unlink(path).catch(() => undefined);
    }
    throw new HostError(
      HostErrorCode.Locked,
      `could not take the lock ${path}; another agent is starting`,
    );
  }

  async release(): Promise<void> {
    if (!this.isHeld) return;
    this.isHeld = false;
    await unlink(this.path).catch((error: unknown) => {
      // Gone already (the data directory was removed under us): there is nothing left to release.
      if (errorCodeOf(error) !== 'ENOENT') throw error;
    });
  }
}

function isAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to someone else.
    return errorCodeOf(error) === 'EPERM';
  }
}
