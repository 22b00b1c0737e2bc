import { join } from 'node:path';
import { openRawFile, type RawFileDevice } from '../block/raw-file.js';
import { applyRedoLog } from '../migrate/methods/snapshot.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Datastore } from './datastore.js';
import type { MoveJournal, MoveRecord } from './move-journal.js';

/**
 * Finishes the moves an agent left in its journal when it died (DESIGN.md, "Authority and crash
 * safety"), before any disk is opened. The destination's descriptor decides:
 *
 * - committed (its generation is above the journaled source generation): the destination is the
 *   disk. Finish the cleanup: tombstone at the source, delete the source's descriptor and image
 *   (only if still at the old generation), the redo logs, the tombstone, the record.
 * - not committed: the source is the disk. If the snapshot method had redirected guest writes to
 *   redo logs, those writes were acknowledged and live only there: apply every log, oldest
 *   first, onto the source image and flush it. Then delete the destination image, the logs, the
 *   record.
 *
 * A record whose datastores are not both available is left for a later start, with a warning:
 * the disk is then not served (the scan skips a source with a tombstone, and an uncommitted
 * destination has no descriptor), which is safer than serving a copy that may be stale.
 */
export interface RecoveryOutcome {
  readonly disk: string;
  readonly outcome: 'finished' | 'rolled-back' | 'left';
  readonly message: string;
}

export async function recoverMoves(
  journal: MoveJournal,
  datastoreNamed: (name: string) => Datastore | undefined,
  log: Logger,
): Promise<RecoveryOutcome[]> {
  const { records, problems } = await journal.list();
  for (const problem of problems) log.warn({}, problem);
  const outcomes: RecoveryOutcome[] = [];
  for (const record of records) {
    const from = datastoreNamed(record.from);
    const to = datastoreNamed(record.to);
    try {
      if (!from || !to)
        throw new Error(`datastore ${!from ? record.from : record.to} is not registered`);
      await from.checkAvailable();
      await to.checkAvailable();
      const target = await to.readDescriptorOf(record.disk);
      const isCommitted = target !== undefined && target.generation > record.generation;
      const outcome = isCommitted
        ? await finishCommitted(record, from, to)
        : await rollBack(record, from, to);
      await journal.remove(record.id);
      log.warn({ disk: record.disk, move: record.id }, outcome.message);
      outcomes.push(outcome);
    } catch (error) {
      const message = `interrupted move ${record.id} of disk ${record.disk} (${record.from} → ${record.to}) cannot be finished now and is left in the journal: ${errorMessageOf(error)}`;
      log.error({ disk: record.disk, move: record.id, err: error }, message);
      outcomes.push({ disk: record.disk, outcome: 'left', message });
    }
  }
  return outcomes;
}

async function finishCommitted(
  record: MoveRecord,
  from: Datastore,
  to: Datastore,
): Promise<RecoveryOutcome> {
  const stale = await from.readDescriptorOf(record.disk);
  if (stale !== undefined && stale.generation <= record.generation) {
    await from.writeTombstone({
      name: record.disk,
      datastore: to.name,
      generation: record.generation + 1,
    });
    await from.removeDisk(stale);
  } else if (stale === undefined) {
    await from.removeFile(record.sourceImage);
  }
  await from.removeTombstone(record.disk);
  for (const redoLog of record.redoLogs) await to.removeFile(redoLog);
  return {
    disk: record.disk,
    outcome: 'finished',
    message: `interrupted move of disk ${record.disk} had committed: it is served from ${to.name}, and ${from.name}'s old copy is deleted`,
  };
}

async function rollBack(
  record: MoveRecord,
  from: Datastore,
  to: Datastore,
): Promise<RecoveryOutcome> {
  let appliedBytes = 0;
  if (record.redoLogs.length > 0) appliedBytes = await applyRedoLogs(record, from, to);
  await to.removeFile(record.image);
  for (const redoLog of record.redoLogs) await to.removeFile(redoLog);
  const merged =
    record.redoLogs.length > 0
      ? `, after merging ${appliedBytes} bytes of redo log back into it`
      : '';
  return {
    disk: record.disk,
    outcome: 'rolled-back',
    message: `interrupted move of disk ${record.disk} had not committed: it is served from ${from.name}${merged}, and the partial copy in ${to.name} is deleted`,
  };
}

/** Applies the move's redo logs, oldest first, onto the source image, then flushes it. */
async function applyRedoLogs(record: MoveRecord, from: Datastore, to: Datastore): Promise<number> {
  const source = await openRawFile(join(from.path, record.sourceImage), { provisioning: 'thin' });
  let applied = 0;
  try {
    for (const redoLog of record.redoLogs) {
      let log: RawFileDevice;
      try {
        log = await openRawFile(join(to.path, redoLog), { provisioning: 'thin' });
      } catch (error) {
        // Journaled but never created (the crash came between the two): it holds nothing.
        if ((error as { cause?: { code?: string } }).cause?.code === 'ENOENT') continue;
        throw error;
      }
      try {
        applied += await applyRedoLog(log, source);
      } finally {
        await log.close();
      }
    }
    await source.flush();
  } finally {
    await source.close();
  }
  return applied;
}
