import { mkdir, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Provisioning } from '../block/raw-file.js';
import type { StatsSnapshot } from '../block/stats.js';
import type { MigrationEvent } from '../migrate/migration.js';
import { type Logger, silentLogger } from '../util/logger.js';
import { DataDirLock } from './data-dir-lock.js';
import type { Datastore } from './datastore.js';
import { checkDiskSize } from './datastore.js';
import { DatastoreRegistry, DEFAULT_DATASTORE } from './datastore-registry.js';
import {
  type DatastoreInfo,
  type DiskInfo,
  describeDatastore,
  describeDisk,
  describePassThrough,
} from './disk-info.js';
import type { CrashPoint } from './disk-mover.js';
import { DiskPublisher } from './disk-publisher.js';
import { closeDiskStack } from './disk-stack.js';
import { HostError, HostErrorCode, notFound } from './errors.js';
import { type DiskEntry, ExportTable } from './export-table.js';
import { HeldDisks } from './held-disks.js';
import { InterruptedVmMotions } from './interrupted-vm-motions.js';
import { MoveJournal } from './move-journal.js';
import { recoverMoves } from './move-recovery.js';
import {
  type DiskMove,
  type MoveDiskRequest,
  type MoveDiskToHostRequest,
  Moves,
  type MoveVmRequest,
  type MoveVmToHostRequest,
  type VmMove,
} from './moves.js';
import { checkName } from './names.js';
import { NetworkRegistry } from './networks.js';
import { Receiver, recoverReceives } from './receiver.js';
import type { PeerLink } from './remote-mover.js';
import { recoverRemoteMoves } from './remote-recovery.js';
import { type ResumableMove, ResumableMoves } from './resumable-moves.js';
import { settleVmMotions } from './vm-motion-recovery.js';
import { recoverVmReceives, VmReceiver } from './vm-receiver.js';
import { RUN_DIR, VmRuntime } from './vm-runtime.js';
import { type CreateVmRequest, type VmInfo, VmService } from './vm-service.js';

export type { DatastoreInfo, DiskInfo } from './disk-info.js';
export type {
  DiskMove,
  Move,
  MoveDiskRequest,
  MoveDiskToHostRequest,
  MoveOutcome,
  MoveResult,
  MoveVmRequest,
  MoveVmToHostRequest,
  VmMove,
  VmMoveResult,
} from './moves.js';
export type { ResumableMove } from './resumable-moves.js';
export type { CreateVmRequest, VmInfo } from './vm-service.js';

/**
 * The agent's storage side: its datastores, the disks in them, and the table of exports the NBD
 * server serves. Every disk of every registered datastore is opened at start; a disk that cannot
 * be (bad descriptor, missing image, duplicate name, datastore down) is skipped with a logged
 * warning, so one broken file never keeps the others offline.
 *
 * VMs are found the same way: every directory of a datastore holding a `vm.json` (vm-home.ts).
 * A VM names its disks; a disk belongs to at most one VM and cannot be removed while it does.
 *
 * Changes (create, import, remove, datastore add/remove, close) run one at a time, in call
 * order: each checks names and then acts, and two interleaved would both pass the check.
 *
 * Moves are moves.ts's; the disks held until a peer resolves an interrupted cross-host move are
 * held-disks.ts's; the VMs whose interrupted move is driven after a restart are
 * interrupted-vm-motions.ts's. Each runs its changes in this agent's queue.
 */
export interface AgentOptions {
  /** Holds `datastores.json`, the lock, and the default datastore; created if missing. */
  readonly dataDir: string;
  readonly log?: Logger;
  /**
   * Closes the NBD connections to an export before its disk is removed; the entry wires it to
   * `NbdServer.dropExport`. Without it, a removed disk's clients find their device closed.
   */
  readonly dropExport?: (name: string) => Promise<void>;
  /** Test seam (`FERRY_CRASH_AT`): every disk move kills the agent at this point. */
  readonly crashAt?: CrashPoint;
  /** This host's name for itself, which peers record (`ferry serve --name`). */
  readonly hostName?: string;
  /** The link to a peer host by name (hosts.ts); without it, cross-host moves are refused. */
  readonly peerLink?: (name: string) => PeerLink | undefined;
  /**
   * The NBD server's local Unix socket, where this host's QEMU guests reach their disks
   * (default `<dataDir>/nbd.sock`; the entry makes the server listen on it).
   */
  readonly nbdSocket?: string;
  /** The QEMU binary VMs run with; default `qemu-system-x86_64`. */
  readonly qemuBinary?: string;
  /** A peer's pre-shared key by its identity (hosts.ts), for VM memory streams over TLS. */
  readonly peerKeyFor?: (identity: string) => Buffer | undefined;
}

export interface CreateDiskRequest {
  readonly name: string;
  readonly sizeBytes: number;
  /** Default: `local`, or the only datastore when there is one. */
  readonly datastore?: string;
  /** Default: thin. */
  readonly provisioning?: Provisioning;
}

export interface ImportDiskRequest {
  readonly name: string;
  /** Absolute path of an existing raw image; it is moved into the datastore. */
  readonly file: string;
  readonly datastore?: string;
}

export class Agent {
  /** The NBD server's export provider. */
  readonly exports = new ExportTable();
  readonly dataDir: string;
  /** What was skipped while opening datastores (at start or on add), for the operator; also logged. */
  readonly warnings: string[] = [];
  private readonly registry: DatastoreRegistry;
  private readonly journal: MoveJournal;
  /** The VMs: homes, configs, QEMU processes, networks (vm-service.ts). */
  readonly vms: VmService;
  /** The NBD server's local Unix socket for this host's guests. */
  readonly nbdSocket: string;
  private readonly lock: DataDirLock;
  private readonly log: Logger;
  private readonly dropExport: (name: string) => Promise<void>;
  private readonly crashAt: CrashPoint | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private isClosed = false;
  /** Aborted at close: stops the waits of cross-host moves whose peer does not answer. */
  private readonly closing = new AbortController();
  private readonly hostName: string;
  private readonly peerLink: (name: string) => PeerLink | undefined;
  /** The destination side of cross-host moves. */
  readonly receiver: Receiver;
  /** The destination side of VMs moving here from another host. */
  readonly vmReceiver: VmReceiver;
  /** Puts disks and pass-throughs into `exports`, and pass-throughs out of it. */
  private readonly publisher: DiskPublisher;
  /** Disks and VMs moving to another datastore or host, and what they hold busy. */
  private readonly moves: Moves;
  /** Local moves a crash interrupted, kept to resume (resumable-moves.ts). */
  private readonly resumable: ResumableMoves;
  /** Disks held at start until a peer says where their cross-host move ended. */
  private readonly held: HeldDisks;
  /** VMs whose move a restart interrupted, while their QEMU is driven to the end of it. */
  private readonly interrupted: InterruptedVmMotions;

  private constructor(
    dataDir: string,
    registry: DatastoreRegistry,
    journal: MoveJournal,
    lock: DataDirLock,
    networks: NetworkRegistry,
    options: AgentOptions,
  ) {
    this.dataDir = dataDir;
    this.registry = registry;
    this.journal = journal;
    this.lock = lock;
    this.log = options.log ?? silentLogger;
    this.dropExport = options.dropExport ?? (async () => {});
    this.crashAt = options.crashAt;
    this.hostName = options.hostName ?? 'localhost';
    this.peerLink = options.peerLink ?? (() => undefined);
    this.nbdSocket = options.nbdSocket ?? join(dataDir, 'nbd.sock');
    this.publisher = new DiskPublisher({
      exports: this.exports,
      log: this.log,
      hostName: this.hostName,
      peerNamed: (name) => this.peerLink(name),
      dropExport: (name) => this.dropExport(name),
      openVms: (datastore) => this.vms.open(datastore),
      warn: (fields, message) => this.warn(fields, message),
    });
    const runtime = new VmRuntime({
      nbdSocket: this.nbdSocket,
      runDir: join(dataDir, RUN_DIR),
      networks,
      log: this.log,
      ...(options.qemuBinary === undefined ? {} : { qemuBinary: options.qemuBinary }),
    });
    this.vms = new VmService(
      {
        log: this.log,
        entryOf: (name) => this.entryOf(name),
        datastoreNamed: (name) => this.pickDatastore(name),
        createDisk: async (name, sizeBytes, datastore) => {
          this.checkNameFree(name);
          const descriptor = await datastore.createDisk(name, sizeBytes, 'thin');
          return this.publisher.publishNew(descriptor, datastore);
        },
        checkNotMoving: (vm) => this.moves.checkVmNotMoving(vm),
        serialize: (task) => this.serialize(task),
        warn: (fields, message) => this.warn(fields, message),
      },
      runtime,
      networks,
    );
    this.receiver = new Receiver({
      dataDir,
      hostName: this.hostName,
      exports: this.exports,
      log: this.log,
      datastoreNamed: (name) => this.pickDatastore(name),
      checkDiskNameFree: (name) => this.checkLocalNameFree(name),
      publishReceived: (descriptor, datastore, stack) =>
        this.publisher.publishReceived(descriptor, datastore, stack),
      dropExport: (name) => this.dropExport(name),
      serialize: (task) => this.serialize(task),
      isCrashAtCommit: this.crashAt === 'receive-commit',
    });
    this.vmReceiver = new VmReceiver({
      dataDir,
      log: this.log,
      exports: this.exports,
      receiver: this.receiver,
      vms: this.vms,
      datastoreNamed: (name) => this.pickDatastore(name),
      serialize: (task) => this.serialize(task),
      isCrashAtCommit: this.crashAt === 'receive-commit',
      keyFor: options.peerKeyFor ?? (() => undefined),
    });
    const datastoreNamed = (name: string): Datastore | undefined => this.registry.get(name);
    const peerNamed = (name: string): PeerLink | undefined => this.peerLink(name);
    this.held = new HeldDisks({
      journal: this.journal,
      log: this.log,
      exports: this.exports,
      closing: this.closing.signal,
      datastoreNamed,
      peerNamed,
      serialize: (task) => this.serialize(task),
      warn: (fields, message) => this.warn(fields, message),
    });
    this.interrupted = new InterruptedVmMotions({
      journal: this.journal,
      log: this.log,
      exports: this.exports,
      vms: this.vms,
      datastoreNamed,
      peerNamed,
      serialize: (task) => this.serialize(task),
      forgetPassThrough: (entry) => this.publisher.forgetPassThrough(entry),
    });
    this.moves = new Moves({
      exports: this.exports,
      journal: this.journal,
      log: this.log,
      vms: this.vms,
      hostName: this.hostName,
      crashAt: this.crashAt,
      closing: this.closing.signal,
      datastoreNamed,
      datastores: () => this.registry.list(),
      peerNamed,
      entryOf: (name) => this.entryOf(name),
      checkNotHeld: (name) => {
        this.held.checkNotHeld(name);
        this.resumable.checkNotOffered(name);
      },
      keepHeld: (name) => this.held.keepHeld(name),
      isRecovering: (vm) => this.interrupted.isRecovering(vm),
      serialize: (task) => this.serialize(task),
    });
    this.resumable = new ResumableMoves({
      journal: this.journal,
      log: this.log,
      moverHost: () => this.moves.moverHost(),
      datastoreNamed,
      findEntry: (name) => this.exports.get(name),
      serialize: (task) => this.serialize(task),
      adopt: (prepared, entry, to) => this.moves.adopt(prepared, entry, to),
      adoptVm: (prepared, vm, entries, to) => this.moves.adoptVm(prepared, vm, entries, to),
      resumeToHost: (record, file, onEvent) => this.moves.resumeToHost(record, file, onEvent),
      abandonAtPeer: (record) => this.moves.abandonAtPeer(record),
    });
  }

  /**
   * Locks `dataDir` (`ERR_DATA_DIR_LOCKED` if another agent has it), loads the datastore
   * registry (registering `local` when there is none) and opens every disk.
   */
  static async open(options: AgentOptions): Promise<Agent> {
    await mkdir(options.dataDir, { recursive: true });
    const dataDir = await realpath(resolve(options.dataDir));
    const lock = await DataDirLock.acquire(dataDir);
    try {
      const registry = await DatastoreRegistry.load(dataDir);
      const journal = await MoveJournal.open(dataDir);
      const networks = await NetworkRegistry.load(dataDir);
      const agent = new Agent(dataDir, registry, journal, lock, networks, options);
      // Moves a crash interrupted are finished before any disk is opened, so the right copy serves.
      const recovered = await recoverMoves(journal, (name) => registry.get(name), agent.log);
      for (const outcome of recovered) agent.warnings.push(outcome.message);
      const datastoreNamed = (name: string): Datastore | undefined => registry.get(name);
      // A VM's receive first: its commit point decides its disks' receives too.
      agent.warnings.push(...(await recoverVmReceives(dataDir, datastoreNamed, agent.log)));
      agent.warnings.push(...(await recoverReceives(dataDir, datastoreNamed, agent.log)));
      const remote = await recoverRemoteMoves({
        journal,
        log: agent.log,
        datastoreNamed,
        peerNamed: (name) => agent.peerLink(name),
      });
      for (const outcome of remote) agent.warnings.push(outcome.message);
      const vmMotions = await settleVmMotions({
        journal,
        log: agent.log,
        datastoreNamed,
        peerNamed: (name) => agent.peerLink(name),
      });
      agent.warnings.push(...vmMotions.messages);
      for (const datastore of registry.list()) await agent.publisher.openDatastore(datastore);
      for (const { resumable } of [...recovered, ...remote]) {
        if (resumable !== undefined) await agent.resumable.offer(resumable.record, resumable.file);
      }
      await agent.held.holdUnresolved(remote);
      agent.vms.nowServing();
      agent.interrupted.drive(vmMotions.pending);
      agent.log.info(
        { dataDir, datastores: registry.list().length, disks: agent.exports.all().length },
        'agent opened',
      );
      return agent;
    } catch (error) {
      await lock.release();
      throw error;
    }
  }

  /** Creates an empty disk and serves it. */
  async createDisk(request: CreateDiskRequest): Promise<DiskInfo> {
    checkName(request.name, 'disk');
    checkDiskSize(request.sizeBytes);
    return this.serialize(async () => {
      this.checkNameFree(request.name);
      const datastore = this.pickDatastore(request.datastore);
      const provisioning = request.provisioning ?? 'thin';
      const descriptor = await datastore.createDisk(request.name, request.sizeBytes, provisioning);
      const entry = await this.publisher.publishNew(descriptor, datastore);
      this.log.info(
        {
          disk: request.name,
          datastore: datastore.name,
          sizeBytes: request.sizeBytes,
          provisioning,
        },
        'disk created',
      );
      return describeDisk(entry);
    });
  }

  /** Adopts an existing raw image as a disk (datastore.ts: moved, never copied) and serves it. */
  async importDisk(request: ImportDiskRequest): Promise<DiskInfo> {
    checkName(request.name, 'disk');
    return this.serialize(async () => {
      this.checkNameFree(request.name);
      const datastore = this.pickDatastore(request.datastore);
      await this.checkNotServed(request.file);
      const descriptor = await datastore.importImage(request.name, request.file);
      const entry = await this.publisher.publishNew(descriptor, datastore);
      this.log.info(
        { disk: request.name, datastore: datastore.name, file: request.file },
        'disk imported',
      );
      return describeDisk(entry);
    });
  }

  /**
   * Stops serving disk `name` (its NBD clients are disconnected once their requests in flight
   * finish), closes its stack and deletes its files. If the descriptor cannot be deleted the disk
   * is opened and served again and the error is rethrown.
   */
  async removeDisk(name: string): Promise<void> {
    await this.serialize(async () => {
      this.moves.checkNotMoving(name);
      const owner = this.vms.ownerOf(name);
      if (owner) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `disk ${name} belongs to VM ${owner.config.name}; remove the VM first (ferry vm rm ${owner.config.name})`,
        );
      }
      const passThrough = this.exports.passThrough(name);
      if (passThrough !== undefined) {
        await this.publisher.forgetPassThrough(passThrough);
        return;
      }
      const entry = this.exports.delete(name);
      if (!entry) throw notFound('disk', name);
      await this.dropExport(name).catch((error: unknown) => {
        this.log.warn({ disk: name, err: error }, 'could not drop the export connections');
      });
      // A failed flush does not matter here: the data is about to be deleted.
      await closeDiskStack(entry.stack).catch((error: unknown) => {
        this.log.warn({ disk: name, err: error }, 'closing the disk before removal failed');
      });
      try {
        const leftover = await entry.datastore.removeDisk(entry.descriptor);
        if (leftover) this.log.warn({ disk: name, file: leftover.file }, leftover.message);
      } catch (error) {
        await this.publisher.publish(entry.descriptor, entry.datastore).catch((reopen: unknown) => {
          this.log.error({ disk: name, err: reopen }, 'disk could not be deleted nor served again');
        });
        throw error;
      }
      this.log.info({ disk: name, datastore: entry.datastore.name }, 'disk removed');
    });
  }
  /**
   * Starts moving disk `name` to another datastore while it stays served (moves.ts). Resolves
   * once the move is journaled; `done` settles when it finished or failed.
   */
  async moveDisk(
    request: MoveDiskRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    return this.moves.moveDisk(request, onEvent);
  }

  /**
   * Local moves a crash interrupted before their commit, kept to resume (issue 10):
   * found at open, until resumed or abandoned. Their disks serve from their sources meanwhile.
   */
  resumableMoves(): readonly ResumableMove[] {
    return this.resumable.list();
  }

  /** Continues interrupted move `id` from its persisted copy state (resumable-moves.ts). */
  resumeMove(id: string, onEvent: (event: MigrationEvent) => void): Promise<DiskMove | VmMove> {
    return this.resumable.resume(id, onEvent);
  }

  /** Rolls interrupted move `id` back: the source stays, the partial copy is deleted. */
  abandonMove(id: string): Promise<void> {
    return this.resumable.abandon(id);
  }

  /** Starts moving disk `name` to another host while it stays served (moves.ts). */
  async moveDiskToHost(
    request: MoveDiskToHostRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    return this.moves.moveDiskToHost(request, onEvent);
  }

  /** Starts moving VM `name`, home and disks, to another datastore while it runs (moves.ts). */
  async moveVm(request: MoveVmRequest, onEvent: (event: MigrationEvent) => void): Promise<VmMove> {
    return this.moves.moveVm(request, onEvent);
  }

  /** Starts moving VM `name` — home, disks and, while it runs, memory — to another host (moves.ts). */
  async moveVmToHost(
    request: MoveVmToHostRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<VmMove> {
    return this.moves.moveVmToHost(request, onEvent);
  }

  /** Registers VM `name` (vm-service.ts). */
  async createVm(request: CreateVmRequest): Promise<VmInfo> {
    return this.vms.create(request);
  }

  async listVms(): Promise<VmInfo[]> {
    return this.vms.list();
  }

  async getVm(name: string): Promise<VmInfo> {
    return this.vms.get(name);
  }

  /** Unregisters VM `name`: deletes its home directory; its disks stay and are served. */
  async removeVm(name: string): Promise<void> {
    await this.vms.remove(name);
  }

  /** Disks that live here, then disks that moved to other hosts and are passed through. */
  async listDisks(): Promise<DiskInfo[]> {
    const local = await Promise.all(this.exports.all().map((entry) => describeDisk(entry)));
    return [...local, ...this.exports.allPassThroughs().map(describePassThrough)];
  }

  async getDisk(name: string): Promise<DiskInfo> {
    const passThrough = this.exports.passThrough(name);
    if (passThrough !== undefined) return describePassThrough(passThrough);
    return describeDisk(this.entryOf(name));
  }

  /** The guest I/O counters of disk `name` (the Stats filter's snapshot). */
  diskStats(name: string): StatsSnapshot {
    return this.entryOf(name).stack.stats.snapshot();
  }

  /** Registers directory `path` (absolute) as a datastore and serves the disks already in it. */
  async addDatastore(name: string, path: string): Promise<DatastoreInfo> {
    return this.serialize(async () => {
      const datastore = await this.registry.add(name, path);
      await this.publisher.openDatastore(datastore);
      this.log.info({ datastore: name, path: datastore.path }, 'datastore added');
      return describeDatastore(datastore, this.exports);
    });
  }

  async listDatastores(): Promise<DatastoreInfo[]> {
    return Promise.all(
      this.registry.list().map((datastore) => describeDatastore(datastore, this.exports)),
    );
  }

  async getDatastore(name: string): Promise<DatastoreInfo> {
    const datastore = this.registry.get(name);
    if (!datastore) throw notFound('datastore', name);
    return describeDatastore(datastore, this.exports);
  }

  /** Unregisters an empty datastore (`ERR_DATASTORE_NOT_EMPTY` otherwise); its directory stays. */
  async removeDatastore(name: string): Promise<void> {
    await this.serialize(async () => {
      const served = this.exports.all().filter((entry) => entry.datastore.name === name).length;
      if (served > 0) {
        throw new HostError(
          HostErrorCode.DatastoreNotEmpty,
          `datastore ${name} still holds ${served} disk(s); remove or move them first`,
        );
      }
      await this.registry.remove(name);
      this.log.info({ datastore: name }, 'datastore removed');
    });
  }

  /**
   * Stops every wait for a peer that does not answer (the first step of a shutdown): a
   * cross-host move whose commit outcome is unknown then ends with its disk held, for the next
   * start to resolve, instead of keeping the shutdown waiting.
   */
  stopWaitingForPeers(): void {
    this.closing.abort();
  }

  /**
   * Flushes and closes every disk, then releases the data directory. Every disk is closed even
   * if another fails; a failure (which may mean lost writes) is logged per disk and the first
   * one rethrown. Later calls do nothing; other operations fail with `ERR_AGENT_CLOSED`.
   */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await this.queue.catch(() => undefined);
    // A move still copying is cancelled (the guest stays on the source); one past its commit
    // finishes. Either way, wait for it before closing the devices under it.
    this.closing.abort();
    await this.moves.cancelAll();
    const failures: unknown[] = [];
    // The guests run on: a restarted agent takes them back (vm-runtime.ts).
    await this.vms.runtime.release();
    this.vmReceiver.close();
    await this.receiver.close();
    for (const entry of this.exports.allPassThroughs()) {
      this.exports.deletePassThrough(entry.name);
      await entry.device.close().catch(() => undefined);
    }
    for (const entry of this.exports.all()) {
      this.exports.delete(entry.descriptor.name);
      await closeDiskStack(entry.stack).catch((error: unknown) => {
        this.log.error(
          { disk: entry.descriptor.name, err: error },
          'flush or close failed at shutdown',
        );
        failures.push(error);
      });
    }
    // Old images of finished moves still being unlinked: done before the data dir is let go.
    await Promise.all(this.registry.list().map((datastore) => datastore.settle()));
    await this.lock.release();
    this.log.info({ dataDir: this.dataDir }, 'agent closed');
    if (failures.length > 0) throw failures[0];
  }

  /** The datastore a request naming `name` (or none: the default) would use; as it would refuse. */
  datastoreNameFor(name: string | undefined): string {
    return this.pickDatastore(name).name;
  }

  private pickDatastore(name: string | undefined): Datastore {
    if (name !== undefined) {
      const datastore = this.registry.get(name);
      if (!datastore) throw notFound('datastore', name);
      return datastore;
    }
    const all = this.registry.list();
    const only = all.length === 1 ? all[0] : undefined;
    const chosen = this.registry.get(DEFAULT_DATASTORE) ?? only;
    if (!chosen) {
      throw new HostError(
        HostErrorCode.DatastoreAmbiguous,
        `there are ${all.length} datastores and none is named ${DEFAULT_DATASTORE}: say which one (${all.map((d) => d.name).join(', ')})`,
      );
    }
    return chosen;
  }

  private checkNameFree(name: string): void {
    const passThrough = this.exports.passThrough(name);
    if (passThrough) {
      throw new HostError(
        HostErrorCode.Exists,
        `disk ${name} lives on host ${passThrough.host} and is passed through here; remove it here first (ferry disk rm ${name}) to reuse the name`,
      );
    }
    this.checkLocalNameFree(name);
  }

  /** Only local disks: a disk passed through to its host may come back here (receiver.ts). */
  private checkLocalNameFree(name: string): void {
    const entry = this.exports.get(name);
    if (entry) {
      throw new HostError(
        HostErrorCode.Exists,
        `disk ${name} already exists in datastore ${entry.datastore.name}`,
      );
    }
  }

  /** Refuses to import a file that is the image of a disk being served. */
  private async checkNotServed(file: string): Promise<void> {
    const path = await realpath(file).catch(() => file);
    const owner = this.exports
      .all()
      .find((entry) => entry.datastore.imagePath(entry.descriptor) === path);
    if (owner) {
      throw new HostError(
        HostErrorCode.Exists,
        `${file} is the image of disk ${owner.descriptor.name}`,
      );
    }
  }

  private entryOf(name: string): DiskEntry {
    const entry = this.exports.get(name);
    if (entry) return entry;
    const passThrough = this.exports.passThrough(name);
    if (passThrough) {
      throw new HostError(
        HostErrorCode.RemoteDisk,
        `disk ${name} lives on host ${passThrough.host} (this host passes it through); run the command there`,
      );
    }
    throw notFound('disk', name);
  }

  private warn(fields: object, message: string): void {
    this.warnings.push(message);
    this.log.warn(fields, message);
  }

  /** Runs `task` after every change queued before it; fails at once once the agent is closed. */
  private serialize<T>(task: () => Promise<T>): Promise<T> {
    if (this.isClosed)
      return Promise.reject(new HostError(HostErrorCode.Closed, 'the agent is closed'));
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }
}
