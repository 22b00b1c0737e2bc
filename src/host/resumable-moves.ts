import { METHOD_NAMES, type MethodName } from '../migrate/method.js';
import type { MigrationEvent } from '../migrate/migration.js';
import { WriteIntentFilter } from '../migrate/write-intent.js';
import type { Logger } from '../util/logger.js';
import type { CopyStateFile } from './copy-state-file.js';
import type { Datastore } from './datastore.js';
import { type MoverHost, type PreparedMove, prepareResumedMove } from './disk-mover.js';
import { HostError, HostErrorCode, notFound } from './errors.js';
import type { DiskEntry } from './export-table.js';
import type { MoveJournal, MoveRecord } from './move-journal.js';
import type { DiskMove, VmMove } from './moves.js';

/**
 * Disk moves a crash interrupted before their commit, which recovery kept with their copy state
 * (move-recovery.ts for local moves; remote-recovery.ts for a disk's move to another host whose
 * peer still has the receive) and the agent offers until someone resumes or abandons each (issue 10).
 * While offered, the disk serves from its source through the state's write-intent
 * filter (copy-state.ts), so every guest write since is copied again by the resume; the disk is
 * busy for any other change. A move nobody resumes stays offered: its record and state stay in
 * the journal, and the next start offers it again.
 */
export interface ResumableMove {
  /** The move's journal id (the id of the move `resumeMove` returns). */
  readonly id: string;
  /** The disk, or the VM's name for a VM move. */
  readonly disk: string;
  readonly vm: string | null;
  readonly disks: readonly string[];
  /** Datastores: `to` on `toHost` when that is set (as `HOST:DATASTORE` in a job's `to`). */
  readonly from: string;
  readonly to: string;
  /** The host a cross-host move goes to; null for a move on this host. */
  readonly toHost: string | null;
  readonly method: MethodName;
  readonly sizeBytes: number;
  /** What the persisted state says is already on the destination. */
  readonly copiedBytes: number;
}

export interface ResumableHost {
  readonly journal: MoveJournal;
  readonly log: Logger;
  moverHost(): MoverHost;
  datastoreNamed(name: string): Datastore | undefined;
  /** The served local disk `name`, if it is served. */
  findEntry(name: string): DiskEntry | undefined;
  serialize<T>(task: () => Promise<T>): Promise<T>;
  /** Runs a prepared move of `entry` to `to` and tracks it as the agent's other moves. */
  adopt(prepared: PreparedMove, entry: DiskEntry, to: Datastore): DiskMove;
  /** The same for VM `vm`'s disks and home. */
  adoptVm(prepared: PreparedMove, vm: string, entries: readonly DiskEntry[], to: Datastore): VmMove;
  /** Resumes a cross-host move (moves.ts, `resumeToHost`); in the caller's turn of the queue. */
  resumeToHost(
    record: MoveRecord,
    file: CopyStateFile,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove>;
  /** Tells the peer of an abandoned cross-host move to drop its copy. */
  abandonAtPeer(record: MoveRecord): Promise<void>;
}

interface Offer {
  readonly record: MoveRecord;
  readonly file: CopyStateFile;
}

export class ResumableMoves {
  private readonly offers = new Map<string, Offer>();

  constructor(private readonly host: ResumableHost) {}

  /**
   * Offers a move recovery kept; puts each of its disks behind the write-intent filter. Call at
   * open, before the disks serve the guest.
   */
  async offer(record: MoveRecord, file: CopyStateFile): Promise<void> {
    for (const disk of record.disks) {
      const entry = this.host.findEntry(disk.disk);
      const state = file.stateOf(disk.disk);
      if (entry === undefined || state === undefined) {
        this.host.log.warn(
          { move: record.id, disk: disk.disk },
          `interrupted move ${record.id}: disk ${disk.disk} is not served; resume or abandon it once it is`,
        );
        continue;
      }
      await entry.stack.top.pause();
      entry.stack.top.repoint(new WriteIntentFilter(entry.stack.stats, state));
      entry.stack.top.resume();
    }
    this.offers.set(record.id, { record, file });
  }

  list(): ResumableMove[] {
    return [...this.offers.values()].map(({ record, file }) => {
      const [first] = record.disks;
      const sizeBytes = file.disks.reduce((sum, each) => sum + each.state.shape.sizeBytes, 0);
      const copiedBytes = file.disks.reduce((sum, each) => sum + each.state.copiedBytes, 0);
      return {
        id: record.id,
        disk: record.vm ?? first?.disk ?? '',
        vm: record.vm,
        disks: record.disks.map((disk) => disk.disk),
        from: record.homeFrom ?? first?.from ?? '',
        to: record.to,
        toHost: typeof record.toHost === 'string' ? record.toHost : null,
        method: methodOf(record),
        sizeBytes,
        copiedBytes,
      };
    });
  }

  /** `ERR_DISK_BUSY` for a disk of an offered move: it must be resumed or abandoned first. */
  checkNotOffered(name: string): void {
    for (const { record } of this.offers.values()) {
      if (record.disks.some((disk) => disk.disk === name)) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `disk ${name} has an interrupted move ${record.id} to ${record.to}; resume or abandon it first`,
        );
      }
    }
  }

  /**
   * Continues move `id` with its method from what its state vouches for (disk-mover.ts,
   * `prepareResumedMove`). `ERR_NOT_FOUND` if it is not offered; on a failure to prepare it
   * stays offered.
   */
  resume(id: string, onEvent: (event: MigrationEvent) => void): Promise<DiskMove | VmMove> {
    return this.host.serialize(async () => {
      const offer = this.take(id);
      const { record, file } = offer;
      try {
        if (typeof record.toHost === 'string') {
          const move = await this.host.resumeToHost(record, file, onEvent);
          this.host.log.info({ move: id, host: record.toHost }, 'interrupted move resumed');
          return move;
        }
        const to = this.host.datastoreNamed(record.to);
        if (to === undefined) throw notFound('datastore', record.to);
        const entries = record.disks.map((disk) => {
          const entry = this.host.findEntry(disk.disk);
          if (entry === undefined) throw notFound('disk', disk.disk);
          return entry;
        });
        const [entry] = entries;
        if (entry === undefined) throw notFound('disk', id);
        const homeFrom =
          record.homeFrom === null ? undefined : this.host.datastoreNamed(record.homeFrom);
        if (record.homeFrom !== null && homeFrom === undefined) {
          throw notFound('datastore', record.homeFrom);
        }
        const home =
          record.vm === null || homeFrom === undefined
            ? {}
            : { home: { vm: record.vm, from: homeFrom } };
        const spec = { entries, to, method: methodOf(record), speedBytesPerSecond: 0, ...home };
        const prepared = await prepareResumedMove(
          this.host.moverHost(),
          spec,
          record,
          file,
          onEvent,
        );
        this.host.log.info(
          { move: id, to: to.name, method: spec.method },
          'interrupted move resumed',
        );
        return record.vm === null
          ? this.host.adopt(prepared, entry, to)
          : this.host.adoptVm(prepared, record.vm, entries, to);
      } catch (error) {
        this.offers.set(id, offer);
        throw error;
      }
    });
  }

  /**
   * Rolls move `id` back as recovery did before resume existed: the source stays, the partial
   * copy and the state are deleted. The state goes first, so a crash half-way leaves a move
   * that the next start rolls back, never one it offers without its image.
   */
  abandon(id: string): Promise<void> {
    return this.host.serialize(async () => {
      const { record, file } = this.take(id);
      for (const disk of record.disks) {
        const entry = this.host.findEntry(disk.disk);
        if (entry === undefined) continue;
        await entry.stack.top.pause();
        entry.stack.top.repoint(entry.stack.stats);
        entry.stack.top.resume();
      }
      if (typeof record.toHost === 'string') {
        await file.remove();
        await this.host.abandonAtPeer(record);
        await this.host.journal.remove(record.id);
        this.host.log.info(
          { move: id },
          `interrupted move abandoned: host ${record.toHost} drops its copy`,
        );
        return;
      }
      const to = this.host.datastoreNamed(record.to);
      if (to === undefined) throw notFound('datastore', record.to);
      await file.remove();
      for (const disk of record.disks) {
        await to.removeDescriptor(disk.disk);
        await to.removeFile(disk.image);
      }
      await this.host.journal.remove(record.id);
      this.host.log.info({ move: id }, 'interrupted move abandoned: the partial copy is deleted');
    });
  }

  private take(id: string): Offer {
    const offer = this.offers.get(id);
    if (offer === undefined) {
      throw new HostError(
        HostErrorCode.NotFound,
        `no interrupted move ${id} to resume; see the agent's resumable moves`,
      );
    }
    this.offers.delete(id);
    return offer;
  }
}

function methodOf(record: MoveRecord): MethodName {
  const name = record.method as MethodName;
  return METHOD_NAMES.includes(name) ? name : 'mirror';
}
