import { join } from 'node:path';
import { openRawFile, type RawFileDevice } from '../block/raw-file.js';
import { applyRedoLog } from '../migrate/methods/snapshot.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { CopyStateFile } from './copy-state-file.js';
import type { Datastore } from './datastore.js';
import type { MoveDiskRecord, MoveJournal, MoveRecord } from './move-journal.js';
import { homeMovePath, homePath, pathIsDirectory, placeHome, removeHome } from './vm-home.js';

/**
 * Finishes the moves an agent left in its journal when it died (DESIGN.md, "Authority and crash
 * safety"), before any disk or VM is opened. The record's commit flag decides (move-journal.ts;
 * for a version 1 record, the destination descriptor's generation):
 *
 * - committed: every destination is the disk. Finish the cleanup disk by disk: tombstone at the
 *   source, delete the source's descriptor and image (only if still at the old generation), the
 *   redo logs, the tombstone. A VM's home is put in place at the destination if the crash came
 *   before that (it cannot: the flag follows it, but a home is cheap to check) and the old one
 *   deleted. Then the record.
 * - not committed: every source is the disk, even where a destination descriptor was already
 *   written (a commit cut short). If the snapshot method had redirected guest writes to redo logs,
 *   those writes were acknowledged and live only there: apply every log, oldest first, onto the
 *   source image and flush it. Then delete every destination descriptor, image and log, the
 *   home's copy, the record.
 *
 * - not committed, a move inside this host with a persisted copy state (copy-state-file.ts): kept
 *   to resume (issue 10) instead. The redo logs are merged as above (the state's intent bits
 *   cover every region they hold, so the resumed copy carries them again) and deleted, with the
 *   destination descriptors and the home's copy; the destination images and the state stay, and
 *   the record stays with no redo logs. The agent serves the sources with the state's
 *   write-intent filter and offers the move (`Agent.resumableMoves`). Doing this again at the
 *   next start finds nothing more to merge or delete: a move nobody resumed stays offered.
 *
 * A record whose datastores are not all available is left for a later start, with a warning:
 * its disks are then not served (the scan skips a source with a tombstone, and an uncommitted
 * destination has no descriptor), which is safer than serving a copy that may be stale.
 */
export interface RecoveryOutcome {
  /** The disk, or the VM for a VM move. */
  readonly disk: string;
  readonly outcome: 'finished' | 'rolled-back' | 'left' | 'resumable';
  readonly message: string;
  /** With `resumable`: the record (no redo logs left) and its copy state. */
  readonly resumable?: { readonly record: MoveRecord; readonly file: CopyStateFile };
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
    // Cross-host moves need their peer's word: remote-recovery.ts.
    if (isRemote(record)) continue;
    const subject = subjectOf(record);
    try {
      const to = await availableDatastore(datastoreNamed, record.to);
      const sources = new Map<string, Datastore>();
      for (const name of fromNames(record)) {
        sources.set(name, await availableDatastore(datastoreNamed, name));
      }
      const isCommitted = await decide(record, to);
      const file =
        isCommitted || !isResumable(record)
          ? undefined
          : await CopyStateFile.load(journal.copyStatePathOf(record.id));
      if (file !== undefined) {
        const outcome = await keepResumable(journal, record, file, sources, to);
        log.warn({ subject, move: record.id }, outcome.message);
        outcomes.push(outcome);
        continue;
      }
      const outcome = isCommitted
        ? await finishCommitted(record, sources, to)
        : await rollBack(record, sources, to);
      await journal.remove(record.id);
      log.warn({ subject, move: record.id }, outcome.message);
      outcomes.push(outcome);
    } catch (error) {
      const message = `interrupted move ${record.id} of ${subject} (→ ${record.to}) cannot be finished now and is left in the journal: ${errorMessageOf(error)}`;
      log.error({ subject, move: record.id, err: error }, message);
      outcomes.push({ disk: record.vm ?? record.disks[0]?.disk ?? '', outcome: 'left', message });
    }
  }
  return outcomes;
}

/** Whether an uncommitted move may resume: one inside this host, of disks or of a VM. */
function isResumable(record: MoveRecord): boolean {
  return !isRemote(record) && record.committed === false;
}

async function keepResumable(
  journal: MoveJournal,
  record: MoveRecord,
  file: CopyStateFile,
  sources: Map<string, Datastore>,
  to: Datastore,
): Promise<RecoveryOutcome> {
  let appliedBytes = 0;
  for (const disk of record.disks) {
    if (file.stateOf(disk.disk) === undefined) {
      throw new Error(`the copy state of move ${record.id} has no disk ${disk.disk}`);
    }
    const from = sourceOf(sources, disk.from);
    if (disk.redoLogs.length > 0) appliedBytes += await applyRedoLogs(disk, from, to);
    await to.removeDescriptor(disk.disk);
  }
  // Durable before the logs go: a crash in between finds a record naming no log, never a
  // record naming a log half deleted.
  if (record.vm !== null && record.homeFrom !== null) {
    // The resume copies the home again (small files); a commit cut short may have placed it.
    await removeHome(homeMovePath(to, record.vm));
    const source = homePath(sourceOf(sources, record.homeFrom), record.vm);
    if (await pathIsDirectory(source)) await removeHome(homePath(to, record.vm));
  }
  const kept: MoveRecord = {
    ...record,
    disks: record.disks.map((disk) => ({ ...disk, redoLogs: [] })),
  };
  await journal.write(kept);
  await journal.removeCommitMark(record.id);
  for (const disk of record.disks) {
    for (const redoLog of disk.redoLogs) await to.removeFile(redoLog);
  }
  const copiedBytes = file.disks.reduce((sum, each) => sum + each.state.copiedBytes, 0);
  const merged = appliedBytes > 0 ? ` (${appliedBytes} bytes of redo log merged back)` : '';
  return {
    disk: record.disks[0]?.disk ?? '',
    outcome: 'resumable',
    message: `interrupted move ${record.id} of ${subjectOf(record)} (→ ${to.name}) had not committed: it is served from its source${merged}, and can resume with ${copiedBytes} bytes already copied`,
    resumable: { record: kept, file },
  };
}

export function isRemote(record: MoveRecord): boolean {
  return record.toHost !== undefined && record.toHost !== null;
}

export function subjectOf(record: MoveRecord): string {
  return record.vm === null
    ? `disk ${record.disks.map((disk) => disk.disk).join(', ')}`
    : `VM ${record.vm}`;
}

function fromNames(record: MoveRecord): Set<string> {
  const names = new Set(record.disks.map((disk) => disk.from));
  if (record.homeFrom !== null) names.add(record.homeFrom);
  return names;
}

async function availableDatastore(
  datastoreNamed: (name: string) => Datastore | undefined,
  name: string,
): Promise<Datastore> {
  const datastore = datastoreNamed(name);
  if (!datastore) throw new Error(`datastore ${name} is not registered`);
  await datastore.checkAvailable();
  return datastore;
}

/** The commit flag; for a version 1 record (one disk), the destination's generation. */
async function decide(record: MoveRecord, to: Datastore): Promise<boolean> {
  if (record.committed !== null) return record.committed;
  const [disk] = record.disks;
  if (disk === undefined) return false;
  const target = await to.readDescriptorOf(disk.disk);
  return target !== undefined && target.generation > disk.generation;
}

function sourceOf(sources: Map<string, Datastore>, name: string): Datastore {
  const datastore = sources.get(name);
  if (!datastore) throw new Error(`datastore ${name} was not checked`);
  return datastore;
}

async function finishCommitted(
  record: MoveRecord,
  sources: Map<string, Datastore>,
  to: Datastore,
): Promise<RecoveryOutcome> {
  for (const disk of record.disks) await finishDisk(disk, sourceOf(sources, disk.from), to);
  if (record.vm !== null && record.homeFrom !== null) {
    const copy = homeMovePath(to, record.vm);
    if (!(await pathIsDirectory(homePath(to, record.vm))) && (await pathIsDirectory(copy))) {
      await placeHome(copy, homePath(to, record.vm));
    }
    await removeHome(homePath(sourceOf(sources, record.homeFrom), record.vm));
  }
  const subject = subjectOf(record);
  return {
    disk: record.vm ?? record.disks[0]?.disk ?? '',
    outcome: 'finished',
    message: `interrupted move of ${subject} had committed: it is served from ${to.name}, and the old copy is deleted`,
  };
}

async function finishDisk(disk: MoveDiskRecord, from: Datastore, to: Datastore): Promise<void> {
  const stale = await from.readDescriptorOf(disk.disk);
  if (stale !== undefined && stale.generation <= disk.generation) {
    await from.writeTombstone({
      name: disk.disk,
      datastore: to.name,
      generation: disk.generation + 1,
    });
    await from.removeDisk(stale);
  } else if (stale === undefined) {
    await from.removeFile(disk.sourceImage);
  }
  await from.removeTombstone(disk.disk);
  for (const redoLog of disk.redoLogs) await to.removeFile(redoLog);
}

async function rollBack(
  record: MoveRecord,
  sources: Map<string, Datastore>,
  to: Datastore,
): Promise<RecoveryOutcome> {
  let appliedBytes = 0;
  for (const disk of record.disks) {
    const from = sourceOf(sources, disk.from);
    if (disk.redoLogs.length > 0) appliedBytes += await applyRedoLogs(disk, from, to);
    await to.removeDescriptor(disk.disk);
    await to.removeFile(disk.image);
    for (const redoLog of disk.redoLogs) await to.removeFile(redoLog);
  }
  if (record.vm !== null && record.homeFrom !== null) {
    await removeHome(homeMovePath(to, record.vm));
    // A commit cut short may have put the home in place; the source's is still there to keep.
    const source = homePath(sourceOf(sources, record.homeFrom), record.vm);
    if (await pathIsDirectory(source)) await removeHome(homePath(to, record.vm));
  }
  const merged = appliedBytes > 0 ? `, after merging ${appliedBytes} bytes of redo log back` : '';
  const where = record.vm === null ? sources.keys().next().value : record.homeFrom;
  return {
    disk: record.vm ?? record.disks[0]?.disk ?? '',
    outcome: 'rolled-back',
    message: `interrupted move of ${subjectOf(record)} had not committed: it is served from ${where}${merged}, and the partial copy in ${to.name} is deleted`,
  };
}

/**
 * Applies a disk's redo logs (files of datastore `to`, or of `from` for a cross-host move),
 * oldest first, onto its source image, then flushes it.
 */
export async function applyRedoLogs(
  disk: MoveDiskRecord,
  from: Datastore,
  to: Datastore,
): Promise<number> {
  const source = await openRawFile(join(from.path, disk.sourceImage), { provisioning: 'thin' });
  let applied = 0;
  try {
    for (const redoLog of disk.redoLogs) {
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
