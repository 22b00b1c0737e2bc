import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { CopyStateFile } from './copy-state-file.js';
import type { Datastore } from './datastore.js';
import type { MoveDiskRecord, MoveJournal, MoveRecord } from './move-journal.js';
import { applyRedoLogs, isRemote } from './move-recovery.js';
import { PeerError } from './peer-client.js';
import { askPeerOnce } from './peer-commit.js';
import type { ReceiveState } from './receiver.js';
import { abortAtPeer, type PeerLink } from './remote-mover.js';

/**
 * Finishes, at start, the cross-host moves this agent left in its journal when it died, as the
 * source (remote-mover.ts has the steps). What decides is what this host wrote, and, only where
 * that is not enough, the peer:
 *
 * - `committed`: the peer is the authority. Tombstone naming the host (the disk's export here
 *   becomes a pass-through), old descriptor and image deleted, redo logs deleted.
 * - not `commitRequested`: the peer cannot have committed (it commits only when asked). Redo logs
 *   (acknowledged guest writes of the snapshot method) are merged into the source image and
 *   deleted. Then, if the move kept a copy state (network path) and the peer still has the
 *   receive (`reattach`), the move is *resumable*: kept in the journal with its state, and the
 *   agent offers it (resumable-moves.ts). Otherwise it is rolled back, and the peer is told to
 *   abort, if it answers.
 * - `commitRequested` without `committed`: ask the peer (`resolve`, which aborts an uncommitted
 *   receive so the answer stays true). No answer: the move is *held* — the disk is served with
 *   its guest I/O held, and the agent keeps asking (Agent.resolveHeld) — never guessed.
 *
 * A held disk's redo logs are merged into its source first: whichever way it resolves, the
 * source then has every acknowledged write, and the logs can go.
 */
export interface RemoteOutcome {
  readonly disk: string;
  readonly outcome: 'finished' | 'rolled-back' | 'held' | 'left' | 'resumable';
  readonly message: string;
  /** For a held move: the record, still in the journal. */
  readonly record?: MoveRecord;
  /** With `resumable`: the record (no redo logs left) and its copy state. */
  readonly resumable?: { readonly record: MoveRecord; readonly file: CopyStateFile };
}

export interface RemoteRecoveryHost {
  readonly journal: MoveJournal;
  readonly log: Logger;
  datastoreNamed(name: string): Datastore | undefined;
  /** The link to a peer by name, or undefined if it is no longer known. */
  peerNamed(name: string): PeerLink | undefined;
}

const RESOLVE_TIMEOUT_MS = 5000;

export async function recoverRemoteMoves(host: RemoteRecoveryHost): Promise<RemoteOutcome[]> {
  const { records } = await host.journal.list();
  const outcomes: RemoteOutcome[] = [];
  // A VM's moves to another host are vm-motion-recovery.ts's.
  for (const record of records.filter((each) => isRemote(each) && each.vm === null)) {
    const disk = record.disks[0];
    if (disk === undefined) continue;
    try {
      const from = host.datastoreNamed(disk.from);
      if (from === undefined) throw new Error(`datastore ${disk.from} is not registered`);
      await from.checkAvailable();
      const outcome = await recoverOne(host, record, disk, from);
      outcomes.push(outcome);
      host.log.warn({ move: record.id, disk: disk.disk }, outcome.message);
    } catch (error) {
      const message = `interrupted move ${record.id} of disk ${disk.disk} to host ${record.toHost} cannot be finished now and is left in the journal: ${errorMessageOf(error)}`;
      host.log.error({ move: record.id, err: error }, message);
      outcomes.push({ disk: disk.disk, outcome: 'left', message });
    }
  }
  return outcomes;
}

async function recoverOne(
  host: RemoteRecoveryHost,
  record: MoveRecord,
  disk: MoveDiskRecord,
  from: Datastore,
): Promise<RemoteOutcome> {
  const peerName = record.toHost ?? '';
  const peer = host.peerNamed(peerName);
  if (record.committed === true) {
    await finishRemote(host, record, disk, from, peer);
    return {
      disk: disk.disk,
      outcome: 'finished',
      message: `interrupted move of disk ${disk.disk} to host ${peerName} had committed: it lives there, and its export here passes through`,
    };
  }
  if (record.commitRequested !== true) {
    const resumable = await resumableOf(host, record, disk, from, peer);
    if (resumable !== undefined) {
      return {
        disk: disk.disk,
        outcome: 'resumable',
        resumable,
        message: `interrupted move ${record.id} of disk ${disk.disk} to host ${peerName} had not asked for its commit and host ${peerName} still has its copy: it is served here and resumes from its copy state`,
      };
    }
    const merged = await rollBackRemote(host, record, disk, from);
    if (peer !== undefined) await abortAtPeer(host, peer, record.id);
    return {
      disk: disk.disk,
      outcome: 'rolled-back',
      message: `interrupted move of disk ${disk.disk} to host ${peerName} had not asked for its commit: it is served here${merged}`,
    };
  }
  // Only the peer knows. First make the source whole, so either answer needs nothing more here.
  const merged = await mergeRedoLogs(host, record, disk, from);
  const state = peer === undefined ? undefined : await askPeer(peer, record, disk);
  if (state === 'committed') {
    await finishRemote(host, merged, disk, from, peer);
    return {
      disk: disk.disk,
      outcome: 'finished',
      message: `interrupted move of disk ${disk.disk}: host ${peerName} confirms its commit; the disk lives there and its export here passes through`,
    };
  }
  if (state === 'aborted') {
    await host.journal.remove(record.id);
    return {
      disk: disk.disk,
      outcome: 'rolled-back',
      message: `interrupted move of disk ${disk.disk}: host ${peerName} had not committed; the disk is served here`,
    };
  }
  return {
    disk: disk.disk,
    outcome: 'held',
    record: merged,
    message: `interrupted move of disk ${disk.disk}: host ${peerName} cannot say whether it committed; guest I/O on the disk is held until it does`,
  };
}

/**
 * The move as it can resume, with its redo logs merged into the source: when it kept a copy
 * state and the peer still has its receive. Undefined otherwise (then it rolls back); a peer
 * that cannot be asked now counts as one that dropped it.
 */
async function resumableOf(
  host: RemoteRecoveryHost,
  record: MoveRecord,
  disk: MoveDiskRecord,
  from: Datastore,
  peer: PeerLink | undefined,
): Promise<{ record: MoveRecord; file: CopyStateFile } | undefined> {
  if (peer === undefined) return undefined;
  const file = await CopyStateFile.load(host.journal.copyStatePathOf(record.id)).catch(
    (error: unknown) => {
      host.log.warn({ move: record.id, err: error }, 'the copy state is unreadable; rolling back');
      return undefined;
    },
  );
  if (file === undefined) return undefined;
  try {
    await peer.post(`/v1/receives/${record.id}/reattach`, {}, { timeoutMs: RESOLVE_TIMEOUT_MS });
  } catch (error) {
    const why = error instanceof PeerError && error.remoteCode !== null ? 'dropped' : 'unreachable';
    host.log.warn(
      { move: record.id, host: peer.name, err: error },
      `host ${peer.name}'s copy is ${why}: the move rolls back`,
    );
    return undefined;
  }
  return { record: await mergeRedoLogs(host, record, disk, from), file };
}

/** The peer's word on a receive, or undefined when it cannot be had now. */
export function askPeer(
  peer: PeerLink,
  record: MoveRecord,
  disk: MoveDiskRecord,
): Promise<ReceiveState | undefined> {
  return askPeerOnce(peer, {
    path: `/v1/receives/${record.id}/resolve`,
    body: { disk: disk.disk, generation: disk.generation },
  });
}

/** The peer is the authority: leave the tombstone naming it, delete the old copy and the logs. */
export async function finishRemote(
  host: RemoteRecoveryHost,
  record: MoveRecord,
  disk: MoveDiskRecord,
  from: Datastore,
  peer: PeerLink | undefined,
): Promise<void> {
  await leaveDiskForPeer(record, disk, from);
  if (peer !== undefined) {
    await peer
      .post(`/v1/receives/${record.id}/finish`, {}, { timeoutMs: RESOLVE_TIMEOUT_MS })
      .catch(() => undefined);
  }
  await host.journal.remove(record.id);
}

/**
 * The peer is disk `disk`'s authority: a tombstone naming the peer (this host's export of the
 * disk becomes a pass-through), the old copy and its redo logs deleted. Idempotent.
 */
export async function leaveDiskForPeer(
  record: MoveRecord,
  disk: MoveDiskRecord,
  from: Datastore,
): Promise<void> {
  // The tombstone is written while the old descriptor still exists (it carries the size), so a
  // descriptor already gone means the tombstone is there.
  const stale = await from.readDescriptorOf(disk.disk);
  if (stale !== undefined && stale.generation <= disk.generation) {
    await from.writeTombstone({
      name: disk.disk,
      datastore: record.to,
      generation: disk.generation + 1,
      host: record.toHost ?? '',
      sizeBytes: stale.sizeBytes,
    });
    await from.removeDisk(stale);
  } else if (stale === undefined) {
    await from.removeFile(disk.sourceImage);
  }
  for (const redoLog of disk.redoLogs) await from.removeFile(redoLog);
}

/** The source is the authority: merge the logs back, delete them, drop the record. */
async function rollBackRemote(
  host: RemoteRecoveryHost,
  record: MoveRecord,
  disk: MoveDiskRecord,
  from: Datastore,
): Promise<string> {
  const applied = disk.redoLogs.length > 0 ? await applyRedoLogs(disk, from, from) : 0;
  for (const redoLog of disk.redoLogs) await from.removeFile(redoLog);
  await host.journal.remove(record.id);
  return applied > 0 ? `, after merging ${applied} bytes of redo log back` : '';
}

/** Merges a held move's logs into its source and journals that they are gone. */
async function mergeRedoLogs(
  host: RemoteRecoveryHost,
  record: MoveRecord,
  disk: MoveDiskRecord,
  from: Datastore,
): Promise<MoveRecord> {
  if (disk.redoLogs.length === 0) return record;
  await applyRedoLogs(disk, from, from);
  const merged: MoveRecord = { ...record, disks: [{ ...disk, redoLogs: [] }] };
  await host.journal.write(merged);
  for (const redoLog of disk.redoLogs) await from.removeFile(redoLog);
  return merged;
}
