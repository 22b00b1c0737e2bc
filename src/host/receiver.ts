import { join } from 'node:path';
import { openRawFile, type Provisioning } from '../block/raw-file.js';
import { Stats } from '../block/stats.js';
import { Switch } from '../block/switch.js';
import { errorCodeOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { formatSize } from '../util/size.js';
import type { Datastore } from './datastore.js';
import { DESCRIPTOR_VERSION, type DiskDescriptor } from './descriptor.js';
import type { DiskStack } from './disk-stack.js';
import { HostError, HostErrorCode } from './errors.js';
import type { ExportTable } from './export-table.js';
import { checkName } from './names.js';
import { RecordFiles } from './record-files.js';

/**
 * The destination side of a cross-host disk move (issue 7; DESIGN.md, "Cross-host"). A peer
 * agent, the source, drives the move; this host only receives:
 *
 *   1. `receive`: a record under `<data>/receives/` (durable), then an empty image in the
 *      datastore, with no descriptor: not a disk yet. The image is served, behind its own Switch
 *      and Stats, as a *receiving export* `ferry-receive-<id>` that only the source can see (a
 *      connection that proved the source's pre-shared key identity over TLS).
 *   2. the source copies and mirrors into it over NBD.
 *   3. `commit`: the descriptor at the source's generation + 1, written atomically — THE commit
 *      point: from then on this host is the disk's authority — and the disk is served under its
 *      own name on the same stack (the source's connections keep working through it).
 *   4. `finish`: the source has recorded the commit; the record goes.
 *
 * Or `abort` (the source rolled back): the image and the record are deleted. `resolve` answers
 * a source that lost the answer to its commit: committed if the descriptor is here, otherwise it
 * aborts first, in the same serialized step, so a commit cannot land after the answer "aborted".
 *
 * At start (`recoverReceives`), a receive without its descriptor is aborted: the source's
 * connections died with this process, so its migration failed and it serves the disk itself; it
 * never sends a commit for a copy it lost. A committed one only loses its record.
 */
export interface ReceiveRequest {
  /** The source's move id; unique per move. */
  readonly id: string;
  readonly disk: string;
  readonly sizeBytes: number;
  readonly provisioning: Provisioning;
  /** The source descriptor's generation; the commit writes `generation + 1`. */
  readonly generation: number;
  readonly createdAt: string;
  /** The datastore here; default: the agent's default one. */
  readonly datastore?: string;
  /** The source host's name for itself (for logs and `disk show`). */
  readonly sourceHost: string;
}

export interface ReceiveTicket {
  readonly id: string;
  readonly exportName: string;
  readonly datastore: string;
  /** The datastore's identity (datastore.ts): a source that has it too writes the image directly. */
  readonly datastoreId: string;
  /** The image's file name in the datastore. */
  readonly image: string;
}

export type ReceiveState = 'committed' | 'aborted';

/** A receive under way, as `list` shows it. */
export interface ReceiveInfo {
  readonly id: string;
  /** The move it belongs to: its own id, or the VM's move for a VM's disk (vm-receiver.ts). */
  readonly move: string;
  readonly disk: string;
  /** The source host's name for itself. */
  readonly from: string;
  readonly committed: boolean;
  readonly writtenBytes: number;
  readonly sizeBytes: number;
  readonly datastore: string;
  /** The key identity the source proved. */
  readonly pskIdentity: string;
}

interface ReceiveRecord {
  readonly version: 1;
  readonly id: string;
  readonly disk: string;
  readonly datastore: string;
  readonly generation: number;
  readonly sizeBytes: number;
  readonly provisioning: Provisioning;
  readonly createdAt: string;
  readonly sourceHost: string;
  readonly pskIdentity: string;
}

interface LiveReceive {
  readonly record: ReceiveRecord;
  readonly move: string;
  readonly datastore: Datastore;
  readonly stack: DiskStack;
  readonly exportName: string;
  isCommitted: boolean;
}

/** What the receiver needs of its agent. */
export interface ReceiverHost {
  readonly dataDir: string;
  /** This host's name, written into a committed descriptor (shared datastores). */
  readonly hostName: string;
  readonly exports: ExportTable;
  readonly log: Logger;
  datastoreNamed(name: string | undefined): Datastore;
  /** Throws `ERR_EXISTS` if a local disk of that name is served here. */
  checkDiskNameFree(name: string): void;
  /** Serves a committed disk under its name (replacing a pass-through of it, if any). */
  publishReceived(
    descriptor: DiskDescriptor,
    datastore: Datastore,
    stack: DiskStack,
  ): Promise<void>;
  /** Closes the NBD connections to an export. */
  dropExport(name: string): Promise<void>;
  /** Runs `task` in the agent's change queue. */
  serialize<T>(task: () => Promise<T>): Promise<T>;
  /** Test seam (`FERRY_CRASH_AT=receive-commit`): kills the agent at that point. */
  readonly isCrashAtCommit: boolean;
}

const RECEIVES_DIR = 'receives';

export class Receiver {
  private readonly live = new Map<string, LiveReceive>();

  private readonly records: RecordFiles<ReceiveRecord>;

  constructor(private readonly host: ReceiverHost) {
    this.records = new RecordFiles(join(host.dataDir, RECEIVES_DIR));
  }

  /** Step 1. `pskIdentity` is the peer identity that authenticated the request. */
  async receive(request: ReceiveRequest, pskIdentity: string): Promise<ReceiveTicket> {
    checkName(request.disk, 'disk');
    return this.host.serialize(() => this.receiveInQueue(request, pskIdentity));
  }

  /**
   * Step 1 in the caller's turn of the agent's change queue (a VM's disks, together; `move` is
   * then the VM's move id, so that the scheduler counts the VM once).
   */
  async receiveInQueue(
    request: ReceiveRequest,
    pskIdentity: string,
    move = request.id,
  ): Promise<ReceiveTicket> {
    checkName(request.disk, 'disk');
    {
      if (this.live.has(request.id)) {
        throw new HostError(HostErrorCode.Exists, `receive ${request.id} is already under way`);
      }
      const busy = [...this.live.values()].find((each) => each.record.disk === request.disk);
      if (busy !== undefined) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `disk ${request.disk} is already being received (move ${busy.record.id})`,
        );
      }
      this.host.checkDiskNameFree(request.disk);
      const datastore = this.host.datastoreNamed(request.datastore);
      await datastore.checkAvailable();
      const record: ReceiveRecord = {
        version: 1,
        id: request.id,
        disk: request.disk,
        datastore: datastore.name,
        generation: request.generation,
        sizeBytes: request.sizeBytes,
        provisioning: request.provisioning,
        createdAt: request.createdAt,
        sourceHost: request.sourceHost,
        pskIdentity,
      };
      await this.records.write(record);
      const descriptor = descriptorOf(record);
      let stack: DiskStack | undefined;
      try {
        await datastore.createMoveTarget(descriptor, request.provisioning);
        const raw = await openRawFile(datastore.imagePath(descriptor), {
          provisioning: request.provisioning,
        });
        const stats = new Stats(raw);
        stack = { raw, stats, top: new Switch(stats) };
      } catch (error) {
        if (errorCodeOf(error) !== HostErrorCode.Exists) {
          await datastore.removeFile(descriptor.image).catch(() => undefined);
        }
        await this.records.remove(record.id);
        throw error;
      }
      const exportName = `ferry-receive-${record.id}`;
      this.host.exports.addReceiving(
        {
          name: exportName,
          description: `${formatSize(record.sizeBytes)} disk ${record.disk} arriving from host ${record.sourceHost}`,
          device: stack.top,
        },
        pskIdentity,
      );
      this.live.set(record.id, { record, move, datastore, stack, exportName, isCommitted: false });
      this.host.log.info(
        { move: record.id, disk: record.disk, from: record.sourceHost, datastore: datastore.name },
        'receiving a disk',
      );
      return {
        id: record.id,
        exportName,
        datastore: datastore.name,
        datastoreId: await datastore.identity(),
        image: descriptor.image,
      };
    }
  }

  /**
   * Step 3: makes this host the disk's authority at `generation + 1`, durably, and serves it.
   * Idempotent: a source that retries after a lost answer gets `committed` again. `isShared`:
   * the source reaches this datastore too (shared storage), so the descriptor names this host
   * as the one that serves the disk, and the source leaves it alone.
   */
  async commit(id: string, isShared = false): Promise<ReceiveState> {
    return this.host.serialize(async (): Promise<ReceiveState> => {
      const live = this.live.get(id);
      if (live === undefined) {
        throw new HostError(
          HostErrorCode.NotFound,
          `no receive ${id} under way here (aborted, or lost when this agent restarted)`,
        );
      }
      if (live.isCommitted) return 'committed';
      const { record, datastore, stack } = live;
      await stack.top.flush();
      const descriptor: DiskDescriptor = {
        ...descriptorOf(record),
        generation: record.generation + 1,
        ...(isShared ? { host: this.host.hostName } : {}),
      };
      await datastore.commitDescriptor(descriptor);
      if (this.host.isCrashAtCommit) {
        this.host.log.error({ move: id }, 'crash point receive-commit: killing the agent');
        process.kill(process.pid, 'SIGKILL');
      }
      live.isCommitted = true;
      await this.host.publishReceived(descriptor, datastore, stack);
      this.host.log.info(
        { move: id, disk: record.disk, generation: descriptor.generation, from: record.sourceHost },
        'received disk committed: this host is its authority',
      );
      return 'committed';
    });
  }

  /**
   * Commits receives `ids` as one (a VM's disks, vm-receiver.ts): every one flushed, then
   * `commitPoint` — the caller's one durable write that makes them all committed — then each
   * descriptor at its next generation, `beforePublish` (the caller lets go of the disk's name),
   * and the disk served. Runs in the caller's turn of the agent's change queue.
   */
  async commitAllInQueue(
    ids: readonly string[],
    commitPoint: () => Promise<void>,
    beforePublish: (disk: string) => void,
  ): Promise<void> {
    const lives = ids.map((id) => {
      const live = this.live.get(id);
      if (live === undefined) {
        throw new HostError(HostErrorCode.NotFound, `no receive ${id} under way here`);
      }
      return live;
    });
    await Promise.all(lives.map((live) => live.stack.top.flush()));
    await commitPoint();
    for (const live of lives) {
      const descriptor: DiskDescriptor = {
        ...descriptorOf(live.record),
        generation: live.record.generation + 1,
      };
      await live.datastore.commitDescriptor(descriptor);
      live.isCommitted = true;
      beforePublish(live.record.disk);
      await this.host.publishReceived(descriptor, live.datastore, live.stack);
    }
  }

  /** What receive `id` writes into, while it is under way. */
  stackOf(id: string): DiskStack | undefined {
    return this.live.get(id)?.stack;
  }

  /** Aborts receive `id` in the caller's turn of the change queue (a VM's disks, together). */
  async abortInQueue(id: string): Promise<void> {
    const live = this.live.get(id);
    if (live !== undefined && !live.isCommitted) await this.discard(live);
  }

  /** Step 4 in the caller's turn of the change queue. */
  async finishInQueue(id: string): Promise<void> {
    const live = this.live.get(id);
    if (live === undefined || !live.isCommitted) return;
    this.host.exports.deleteReceiving(live.exportName);
    this.live.delete(id);
    await this.records.remove(id);
  }

  /**
   * For a source that does not know whether its commit landed: `committed` if it did; if not,
   * the receive is aborted now, so the answer `aborted` stays true.
   */
  async resolve(id: string, disk: string, generation: number): Promise<ReceiveState> {
    return this.host.serialize(async () => {
      const live = this.live.get(id);
      if (live?.isCommitted) return 'committed';
      if (live !== undefined) {
        await this.discard(live);
        return 'aborted';
      }
      // Not live: either never committed (aborted, or lost with a restart) or committed and
      // its record finished. The descriptor decides.
      return this.isCommittedOnDisk(disk, generation) ? 'committed' : 'aborted';
    });
  }

  /**
   * The source restarted after a crash and resumes its move from its persisted copy state: the
   * receive's ticket again, for the same key identity, if it is under way and not committed.
   * `ERR_NOT_FOUND` otherwise (this host restarted and dropped it, or it ended): the source then
   * rolls back as before resume existed.
   */
  async reattach(id: string, pskIdentity: string): Promise<ReceiveTicket> {
    const live = this.live.get(id);
    if (live === undefined || live.isCommitted || live.record.pskIdentity !== pskIdentity) {
      throw new HostError(
        HostErrorCode.NotFound,
        `no uncommitted receive ${id} here to resume (it was dropped at a restart, or has ended)`,
      );
    }
    this.host.log.info({ move: id, disk: live.record.disk }, 'the source resumes its move');
    return {
      id,
      exportName: live.exportName,
      datastore: live.datastore.name,
      datastoreId: await live.datastore.identity(),
      image: descriptorOf(live.record).image,
    };
  }

  /** The source rolled back: drop the copy. Refused once committed (`ERR_DISK_BUSY`). */
  async abort(id: string): Promise<void> {
    await this.host.serialize(async () => {
      const live = this.live.get(id);
      if (live === undefined) return;
      if (live.isCommitted) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `receive ${id} is committed: disk ${live.record.disk} lives here now`,
        );
      }
      await this.discard(live);
    });
  }

  /** Step 4: the source recorded the commit. The receiving export goes; its connections stay. */
  async finish(id: string): Promise<void> {
    await this.host.serialize(async () => {
      const live = this.live.get(id);
      if (live === undefined) return;
      if (!live.isCommitted) {
        throw new HostError(HostErrorCode.DiskBusy, `receive ${id} is not committed`);
      }
      this.host.exports.deleteReceiving(live.exportName);
      this.live.delete(id);
      await this.records.remove(id);
    });
  }

  /**
   * Bytes written into each receive so far (for the destination's view of a move). `pskIdentity`
   * finds the source among the peers when its name for itself is not ours for it
   * (control/remote-jobs.ts).
   */
  list(): ReceiveInfo[] {
    return [...this.live.values()].map((live) => ({
      id: live.record.id,
      move: live.move,
      disk: live.record.disk,
      from: live.record.sourceHost,
      committed: live.isCommitted,
      writtenBytes: live.stack.stats.snapshot().verbs.write.bytes,
      sizeBytes: live.record.sizeBytes,
      datastore: live.record.datastore,
      pskIdentity: live.record.pskIdentity,
    }));
  }

  /** Closes every receive at shutdown; an uncommitted one is left for `recoverReceives`. */
  async close(): Promise<void> {
    for (const live of this.live.values()) {
      this.host.exports.deleteReceiving(live.exportName);
      if (!live.isCommitted) await live.stack.raw.close().catch(() => undefined);
    }
    this.live.clear();
  }

  private async discard(live: LiveReceive): Promise<void> {
    const { record, datastore, stack, exportName } = live;
    this.host.exports.deleteReceiving(exportName);
    this.live.delete(record.id);
    await this.host.dropExport(exportName).catch(() => undefined);
    await stack.raw.close().catch(() => undefined);
    await datastore.removeFile(descriptorOf(record).image);
    await this.records.remove(record.id);
    this.host.log.info({ move: record.id, disk: record.disk }, 'receive aborted');
  }

  /** Served here at a later generation than the source's: the commit happened. */
  private isCommittedOnDisk(disk: string, generation: number): boolean {
    const entry = this.host.exports.get(disk);
    return entry !== undefined && entry.descriptor.generation > generation;
  }
}

function descriptorOf(record: ReceiveRecord): DiskDescriptor {
  return {
    version: DESCRIPTOR_VERSION,
    name: record.disk,
    sizeBytes: record.sizeBytes,
    format: 'raw',
    provisioning: record.provisioning,
    generation: record.generation,
    image: `${record.disk}.raw`,
    createdAt: record.createdAt,
  };
}

/**
 * At start, before the datastores are opened: every receive a restart interrupted. Without its
 * descriptor at the next generation it is aborted (image deleted); with it, only the record goes
 * (the scan serves the disk).
 */
export async function recoverReceives(
  dataDir: string,
  datastoreNamed: (name: string) => Datastore | undefined,
  log: Logger,
): Promise<string[]> {
  const dir = join(dataDir, RECEIVES_DIR);
  return new RecordFiles<ReceiveRecord>(dir).settle('receive', log, async (record) => {
    const datastore = datastoreNamed(record.datastore);
    if (datastore === undefined) throw new Error(`datastore ${record.datastore} is not known`);
    const found = await datastore.readDescriptorOf(record.disk);
    const isCommitted = found !== undefined && found.generation > record.generation;
    if (!isCommitted) await datastore.removeFile(descriptorOf(record).image);
    return isCommitted
      ? `disk ${record.disk} received from host ${record.sourceHost} was committed before a restart; it is served here`
      : `receive of disk ${record.disk} from host ${record.sourceHost} was cut by a restart; its partial copy is deleted (the source still has the disk)`;
  });
}

/**
 * At start, for receives a committed VM receive names (vm-receiver.ts, whose record is the commit
 * point of all its disks): each disk's descriptor at the next generation, where it is missing.
 * Runs before `recoverReceives`, which then finds them committed.
 */
export async function commitReceivesAtStart(
  dataDir: string,
  ids: readonly string[],
  datastoreNamed: (name: string) => Datastore | undefined,
): Promise<void> {
  const records = new RecordFiles<ReceiveRecord>(join(dataDir, RECEIVES_DIR));
  for (const id of ids) {
    const record = await records.read(id);
    if (record === undefined) continue;
    const datastore = datastoreNamed(record.datastore);
    if (datastore === undefined) throw new Error(`datastore ${record.datastore} is not known`);
    const found = await datastore.readDescriptorOf(record.disk);
    if (found !== undefined && found.generation > record.generation) continue;
    await datastore.commitDescriptor({
      ...descriptorOf(record),
      generation: record.generation + 1,
    });
  }
}
