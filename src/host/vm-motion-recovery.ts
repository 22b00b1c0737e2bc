import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Datastore } from './datastore.js';
import type { MoveJournal, MoveRecord } from './move-journal.js';
import { applyRedoLogs, isRemote } from './move-recovery.js';
import { askPeerOnce } from './peer-commit.js';
import {
  continueMigration,
  queryMigration,
  waitForMigrationStatus,
} from './qemu/live-migration.js';
import type { QemuProcess } from './qemu/qemu-process.js';
import type { PeerLink } from './remote-mover.js';
import { leaveDiskForPeer } from './remote-recovery.js';
import { abortVmAtPeer, resumeGuestHere } from './vm-motion.js';

/**
 * Finishes, at start, the VM moves to another host this agent left in its journal when it died
 * (vm-motion.ts has the steps). It works in two halves, because the VM's QEMU outlived the agent
 * and can only be driven once the agent serves its disks again:
 *
 * `settleVmMotions`, before the datastores are opened, settles the disks' authority from the
 * journal and, only where that is not enough, the peer's word:
 *   - `committed` (or the peer confirms it): the peer has the disks. Each gets a tombstone
 *     naming the peer (its export here passes through there) and its copy here goes.
 *   - not `commitRequested` (or the peer says it aborted): the disks here are the authority;
 *     redo logs are merged back, the peer is told to drop its copy, the record goes.
 *   - asked but unanswered: the record stays, nothing changes, and the QEMU stays stopped.
 *
 * `driveVmMotion`, once the agent serves again, does the QEMU's part: backward, QEMU's
 * migration is cancelled and the guest resumes here; forward, QEMU is told to go on
 * (`migrate-continue`), the guest runs at the peer, and the VM is forgotten here. A guest
 * whose memory cannot follow then resumes here over its disks at the peer.
 */
export interface VmRecoveryHost {
  readonly journal: MoveJournal;
  readonly log: Logger;
  datastoreNamed(name: string): Datastore | undefined;
  peerNamed(name: string): PeerLink | undefined;
}

/** What is left to do with a VM's QEMU once the agent serves. */
export interface PendingVmMotion {
  readonly record: MoveRecord;
  readonly direction: 'back' | 'forward' | 'unknown';
}

const COMPLETE_TIMEOUT_MS = 120_000;

export async function settleVmMotions(
  host: VmRecoveryHost,
): Promise<{ messages: string[]; pending: PendingVmMotion[] }> {
  const { records } = await host.journal.list();
  const messages: string[] = [];
  const pending: PendingVmMotion[] = [];
  for (const record of records.filter((each) => isRemote(each) && each.vm !== null)) {
    const peerName = record.toHost ?? '';
    const peer = host.peerNamed(peerName);
    try {
      let direction: PendingVmMotion['direction'];
      if (record.committed === true) direction = 'forward';
      else if (record.commitRequested !== true) direction = 'back';
      else {
        const state =
          peer === undefined
            ? undefined
            : await askPeerOnce(peer, {
                path: `/v1/vm-receives/${record.id}/resolve`,
                body: { vm: record.vm },
              });
        direction = state === 'committed' ? 'forward' : state === 'aborted' ? 'back' : 'unknown';
      }
      let settled = record;
      if (direction === 'forward') {
        settled = { ...record, committed: true };
        await host.journal.write(settled);
        await leaveForPeer(host, settled);
      } else if (direction === 'back') {
        await takeBack(host, record);
        // Merged: a second crash must not merge them again.
        settled = { ...record, disks: record.disks.map((disk) => ({ ...disk, redoLogs: [] })) };
        await host.journal.write(settled);
        if (peer !== undefined) await abortVmAtPeer(host, peer, record.id);
      }
      pending.push({ record: settled, direction });
      const message =
        direction === 'forward'
          ? `interrupted move of VM ${record.vm} to host ${peerName} had committed: its disks live there; the move goes on`
          : direction === 'back'
            ? `interrupted move of VM ${record.vm} to host ${peerName} had not committed: it stays here`
            : `interrupted move of VM ${record.vm}: host ${peerName} cannot say whether it committed; the VM stays stopped until it can (restart the agent then)`;
      host.log.warn({ move: record.id, vm: record.vm }, message);
      messages.push(message);
    } catch (error) {
      const message = `interrupted move ${record.id} of VM ${record.vm} to host ${peerName} cannot be settled now and is left in the journal: ${errorMessageOf(error)}`;
      host.log.error({ move: record.id, err: error }, message);
      messages.push(message);
    }
  }
  return { messages, pending };
}

/** What driving a VM's QEMU after the restart needs of the agent. */
export interface VmDriveHost extends VmRecoveryHost {
  /** The VM's QEMU, taken back at start, or undefined if it no longer runs. */
  qemuOf(vm: string): QemuProcess | undefined;
  /** The guest runs at the peer: drop the VM, its home and its disks' pass-throughs here. */
  forgetVm(record: MoveRecord): Promise<void>;
}

/** The second half, in the background once the agent serves its disks again. */
export async function driveVmMotion(host: VmDriveHost, pending: PendingVmMotion): Promise<void> {
  const { record, direction } = pending;
  const vm = record.vm ?? '';
  const qemu = host.qemuOf(vm);
  const peer = host.peerNamed(record.toHost ?? '');
  if (direction === 'unknown') return;
  if (direction === 'back') {
    if (qemu !== undefined) await resumeGuestHere(qemu, host.log, vm);
    await host.journal.remove(record.id);
    return;
  }
  let memoryMoved = qemu === undefined;
  if (qemu !== undefined) {
    try {
      const info = await queryMigration(qemu.qmp);
      if (info.status === 'pre-switchover') await continueMigration(qemu.qmp);
      if (info.status !== 'completed') {
        await waitForMigrationStatus(qemu.qmp, ['completed'], { timeoutMs: COMPLETE_TIMEOUT_MS });
      }
      memoryMoved = true;
      await qemu.quit().catch(() => qemu.kill());
    } catch (error) {
      host.log.error({ vm, err: error }, `VM ${vm}'s memory did not follow its disks`);
      await resumeGuestHere(qemu, host.log, vm);
    }
  }
  if (peer !== undefined) {
    await peer
      .post(`/v1/vm-receives/${record.id}/finish`, { memoryMoved }, { timeoutMs: 60_000 })
      .catch((error: unknown) => {
        host.log.warn({ move: record.id, err: error }, 'the peer could not be told to finish');
      });
  }
  if (memoryMoved) await host.forgetVm(record);
  await host.journal.remove(record.id);
  host.log.warn(
    { move: record.id, vm },
    memoryMoved
      ? `VM ${vm} finished moving to host ${record.toHost}`
      : `VM ${vm} runs here with its disks at host ${record.toHost}`,
  );
}

/** The peer has the disks: tombstones naming it, the copies here deleted. */
async function leaveForPeer(host: VmRecoveryHost, record: MoveRecord): Promise<void> {
  for (const disk of record.disks) {
    const from = host.datastoreNamed(disk.from);
    if (from === undefined) throw new Error(`datastore ${disk.from} is not registered`);
    await leaveDiskForPeer(record, disk, from);
  }
}

/** The disks here are the authority: the redo logs' writes merged back into them. */
async function takeBack(host: VmRecoveryHost, record: MoveRecord): Promise<void> {
  for (const disk of record.disks) {
    const from = host.datastoreNamed(disk.from);
    if (from === undefined) throw new Error(`datastore ${disk.from} is not registered`);
    if (disk.redoLogs.length > 0) await applyRedoLogs(disk, from, from);
    for (const redoLog of disk.redoLogs) await from.removeFile(redoLog);
  }
}
