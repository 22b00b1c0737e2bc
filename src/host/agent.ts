import { mkdir, realpath } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { type Provisioning, statAllocatedBytes } from '../block/raw-file.js';
import type { StatsSnapshot } from '../block/stats.js';
import { Switch } from '../block/switch.js';
import { MigrateErrorCode } from '../migrate/errors.js';
import { METHOD_DEFAULT, type MethodName, type MethodTuning } from '../migrate/method.js';
import type { Migration, MigrationEvent, MigrationResult } from '../migrate/migration.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { type Logger, silentLogger } from '../util/logger.js';
import { DataDirLock } from './data-dir-lock.js';
import type { Datastore } from './datastore.js';
import { checkDiskSize, ORPHAN_IMAGE, type Tombstone } from './datastore.js';
import { DatastoreRegistry, DEFAULT_DATASTORE } from './datastore-registry.js';
import type { DiskDescriptor } from './descriptor.js';
import { type CrashPoint, type MoveSpec, type PreparedMove, prepareMove } from './disk-mover.js';
import { closeDiskStack, type DiskStack, openDiskStack } from './disk-stack.js';
import { HostError, HostErrorCode } from './errors.js';
import { type DiskEntry, ExportTable } from './export-table.js';
import type { MoveRecord } from './move-journal.js';
import { MoveJournal } from './move-journal.js';
import { recoverMoves } from './move-recovery.js';
import { checkName } from './names.js';
import { NetworkRegistry } from './networks.js';
import { type PassThrough, passThroughOf, type RemoteDevice, remoteDisk } from './pass-through.js';
import { Receiver, recoverReceives } from './receiver.js';
import { type PeerLink, prepareRemoteMove } from './remote-mover.js';
import {
  askPeer,
  finishRemote,
  type RemoteOutcome,
  recoverRemoteMoves,
} from './remote-recovery.js';
import { homePath, removeHome } from './vm-home.js';
import { prepareVmMotion, type VmDowntime } from './vm-motion.js';
import { driveVmMotion, type PendingVmMotion, settleVmMotions } from './vm-motion-recovery.js';
import { recoverVmReceives, VmReceiver } from './vm-receiver.js';
import { VmRuntime } from './vm-runtime.js';
import { type CreateVmRequest, type VmInfo, VmService } from './vm-service.js';
import type { VmEntry } from './vm-table.js';

export type { CreateVmRequest, VmInfo } from './vm-service.js';

/** QEMU's own default `downtime-limit`, which vMotion's sub-second stun also aims under. */
const MAX_DOWNTIME_DEFAULT_MS = 300;

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

/** A request to move a disk to another datastore while it is served (`ferry migrate`). */
export interface MoveDiskRequest {
  readonly name: string;
  /** The destination datastore. */
  readonly datastore: string;
  /** Default: mirror. */
  readonly method?: MethodName;
  /** Copy rate, bytes per second; 0 or absent: unlimited. */
  readonly speedBytesPerSecond?: number;
  /** Provisioning of the destination image; default: the source's. */
  readonly provisioning?: Provisioning;
  readonly tuning?: Partial<MethodTuning>;
  readonly chunkBytes?: number;
}

/** A request to move a disk to another host while it is served (`ferry migrate --to-host`). */
export interface MoveDiskToHostRequest extends Omit<MoveDiskRequest, 'datastore'> {
  /** The peer host, by the name `ferry host add` gave it. */
  readonly host: string;
  /** The datastore on that host; default: its default. */
  readonly datastore?: string;
  /** NBD connections to the peer; default 4. */
  readonly connections?: number;
}

/** A request to move a VM — its home directory and every disk — to another datastore, live. */
export interface MoveVmRequest extends Omit<MoveDiskRequest, 'provisioning'> {
  /** Provisioning of the destination images; default: each source's. */
  readonly provisioning?: Provisioning;
}

/** A move under way: its live migration (progress, speed, cancel) and its outcome. */
export interface Move<R extends MoveOutcome> {
  /** The journal id of the move; the job id. */
  readonly id: string;
  readonly migration: Migration;
  /** Resolves once the disks serve from the destination and the sources are cleaned. */
  readonly done: Promise<R>;
}

export interface MoveOutcome extends MigrationResult {
  /** For a running VM moved to another host: where its pause went. */
  readonly memory?: VmDowntime | null;
  /** Datastore moved from (a VM's: its home's) and to. */
  readonly from: string;
  readonly to: string;
}

export interface MoveResult extends MoveOutcome {
  readonly disk: string;
}

/** A request to move a VM — home, disks and, while it runs, its memory — to another host. */
export interface MoveVmToHostRequest extends Omit<MoveVmRequest, 'datastore'> {
  /** The peer host, by the name `ferry host add` gave it. */
  readonly host: string;
  /** The datastore there for the home and every disk; default: its default. */
  readonly datastore?: string;
  /** The datastore there for the disks of each datastore here (`--datastore-map A=B`). */
  readonly datastoreMap?: Readonly<Record<string, string>>;
  /** The network there for each network here (`--network-map br0=br1`). */
  readonly networkMap?: Readonly<Record<string, string>>;
  /** QEMU's downtime limit for the memory's last round; default 300 ms. */
  readonly maxDowntimeMs?: number;
  /** NBD connections to the peer per disk; default 4. */
  readonly connections?: number;
}

export interface VmMoveResult extends MoveOutcome {
  readonly vm: string;
  /** The disks that moved (those already in the destination stay where they are). */
  readonly disks: readonly string[];
}

export type DiskMove = Move<MoveResult>;
export type VmMove = Move<VmMoveResult>;

export interface DiskInfo {
  readonly name: string;
  readonly datastore: string;
  readonly sizeBytes: number;
  readonly provisioning: Provisioning;
  /** Bytes the image occupies on its file system now; null if it cannot be stat'ed. */
  readonly allocatedBytes: number | null;
  readonly generation: number;
  readonly image: string;
  readonly createdAt: string;
  /**
   * Null for a disk that lives here. For a disk that moved to another host, that host's name:
   * `datastore` is then its datastore there, and this host's export passes through to it.
   */
  readonly host: string | null;
}

export interface DatastoreInfo {
  readonly name: string;
  readonly path: string;
  readonly isAvailable: boolean;
  /** Null when the datastore is unavailable. */
  readonly capacityBytes: number | null;
  readonly freeBytes: number | null;
  /** Disks of this datastore the agent serves. */
  readonly diskCount: number;
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
  /** Moves in progress, by disk name (a VM's move under each of its disks). */
  private readonly moves = new Map<string, Move<MoveOutcome>>();
  /** VM moves in progress, by VM name. */
  private readonly vmMoves = new Map<string, VmMove>();
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
  /** Disks held at start until a peer says where their cross-host move ended. */
  private readonly held = new Set<string>();
  /** VMs whose move a restart interrupted, while their QEMU is driven to the end of it. */
  private readonly recovering = new Set<string>();

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
    const runtime = new VmRuntime({
      nbdSocket: this.nbdSocket,
      runDir: join(dataDir, 'run'),
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
          return this.publishNew(descriptor, datastore);
        },
        checkNotMoving: (vm) => this.checkVmNotMoving(vm),
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
        this.publishReceived(descriptor, datastore, stack),
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
      for (const datastore of registry.list()) await agent.openDatastore(datastore);
      await agent.holdUnresolved(remote);
      agent.vms.nowServing();
      agent.driveVmMotions(vmMotions.pending);
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
      const entry = await this.publishNew(descriptor, datastore);
      this.log.info(
        {
          disk: request.name,
          datastore: datastore.name,
          sizeBytes: request.sizeBytes,
          provisioning,
        },
        'disk created',
      );
      return this.describeDisk(entry);
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
      const entry = await this.publishNew(descriptor, datastore);
      this.log.info(
        { disk: request.name, datastore: datastore.name, file: request.file },
        'disk imported',
      );
      return this.describeDisk(entry);
    });
  }

  /**
   * Stops serving disk `name` (its NBD clients are disconnected once their requests in flight
   * finish), closes its stack and deletes its files. If the descriptor cannot be deleted the disk
   * is opened and served again and the error is rethrown.
   */
  async removeDisk(name: string): Promise<void> {
    await this.serialize(async () => {
      this.checkNotMoving(name);
      const owner = this.vms.ownerOf(name);
      if (owner) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `disk ${name} belongs to VM ${owner.config.name}; remove the VM first (ferry vm rm ${owner.config.name})`,
        );
      }
      const passThrough = this.exports.passThrough(name);
      if (passThrough !== undefined) {
        await this.forgetPassThrough(passThrough);
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
        await this.publish(entry.descriptor, entry.datastore).catch((reopen: unknown) => {
          this.log.error({ disk: name, err: reopen }, 'disk could not be deleted nor served again');
        });
        throw error;
      }
      this.log.info({ disk: name, datastore: entry.datastore.name }, 'disk removed');
    });
  }

  /**
   * Stops passing disk `name` through to the host it moved to: its connections here close and
   * its tombstone goes. The disk itself, on the other host, is untouched.
   */
  private async forgetPassThrough(entry: PassThrough): Promise<void> {
    this.exports.deletePassThrough(entry.name);
    await this.dropExport(entry.name).catch(() => undefined);
    await entry.device.close().catch(() => undefined);
    await entry.tombstoneAt.removeTombstone(entry.name);
    this.log.info({ disk: entry.name, host: entry.host }, 'pass-through removed');
  }

  /**
   * Starts moving disk `name` to another datastore while it stays served (DESIGN.md, "The four
   * methods", "Authority and crash safety"). Resolves once the destination image exists and the
   * move is journaled; the returned `done` settles when it finished or failed. `onEvent` sees the
   * migration's events. Rejects at once for an unknown disk or datastore (`ERR_NOT_FOUND`), the
   * disk's own datastore (`ERR_SAME_DATASTORE`), or a disk already moving (`ERR_DISK_BUSY`).
   */
  async moveDisk(
    request: MoveDiskRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    return this.serialize(async () => {
      const entry = this.entryOf(request.name);
      const to = this.registry.get(request.datastore);
      if (!to) throw notFound('datastore', request.datastore);
      if (to.name === entry.datastore.name) {
        throw new HostError(
          HostErrorCode.SameDatastore,
          `disk ${request.name} is already in datastore ${to.name}; name another datastore`,
        );
      }
      this.checkNotMoving(request.name);
      const from = entry.datastore.name;
      const prepared = await this.prepare(request, { entries: [entry], to }, onEvent);
      this.log.info(
        { disk: request.name, from, to: to.name, move: prepared.id, method: request.method },
        'disk move started',
      );
      const done = prepared
        .run()
        .then((result): MoveResult => ({ ...result, disk: request.name, from, to: to.name }));
      return this.track(prepared, done, [request.name]);
    });
  }

  /**
   * Starts moving disk `name` to another host while it stays served (issue 7; remote-mover.ts
   * has the steps). Resolves once the peer has created the destination and the connections to
   * it are open; `done` settles when the move finished or failed. After it, the disk lives on
   * the peer and this host's export of it passes through. Rejects at once for an unknown disk
   * or host (`ERR_NOT_FOUND`), a disk already moving or in a VM (`ERR_DISK_BUSY`), or a peer
   * that refuses or cannot be reached.
   */
  async moveDiskToHost(
    request: MoveDiskToHostRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    return this.serialize(async () => {
      const entry = this.entryOf(request.name);
      const peer = this.peerLink(request.host);
      if (!peer) {
        throw new HostError(
          HostErrorCode.NotFound,
          `no host named ${request.host}; add it with: ferry host add ${request.host} URL --key-file FILE`,
        );
      }
      this.checkNotMoving(request.name);
      const owner = this.vms.ownerOf(request.name);
      if (owner) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `disk ${request.name} belongs to VM ${owner.config.name}; move the VM (ferry migrate ${owner.config.name} --vm) instead`,
        );
      }
      const from = entry.datastore.name;
      const prepared = await prepareRemoteMove(
        { exports: this.exports, journal: this.journal, log: this.log, ...this.crashSeam() },
        {
          entry,
          peer,
          selfName: this.hostName,
          ...(request.datastore === undefined ? {} : { datastore: request.datastore }),
          method: request.method ?? METHOD_DEFAULT,
          speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
          ...(request.provisioning === undefined ? {} : { provisioning: request.provisioning }),
          // Across a network the mirror runs asynchronously and turns synchronous when the link
          // cannot keep up (vSphere 5.1), unless the request says otherwise.
          tuning: { mirrorMode: 'auto', ...request.tuning },
          ...(request.chunkBytes === undefined ? {} : { chunkBytes: request.chunkBytes }),
          ...(request.connections === undefined ? {} : { connections: request.connections }),
          closing: this.closing.signal,
          sharedDatastore: (id) => this.datastoreWithIdentity(id),
        },
        onEvent,
      );
      const to = `${request.host}:${request.datastore ?? 'default'}`;
      this.log.info(
        { disk: request.name, from, host: request.host, move: prepared.id, method: request.method },
        'cross-host disk move started',
      );
      const done = prepared
        .run()
        .then((result): MoveResult => ({ ...result, disk: request.name, from, to }))
        .catch((error: unknown) => {
          if (errorCodeOf(error) === MigrateErrorCode.CommitUnknown) this.keepHeld(request.name);
          throw error;
        });
      return this.track(prepared, done, [request.name]);
    });
  }

  /**
   * A cross-host move ended without knowing whether the peer committed (the agent is closing,
   * or the commit could not be journaled): the disk's guest I/O stays held and nothing may
   * move or remove it. The journal keeps the move; the next start asks the peer and finishes
   * it one way or the other (remote-recovery.ts), merging any redo log first.
   */
  private keepHeld(name: string): void {
    this.held.add(name);
    this.warn(
      { disk: name },
      `disk ${name} is held: its cross-host move's outcome is unknown; restart the agent to resolve it with the peer`,
    );
  }

  /**
   * Starts moving VM `name` — its home directory first, then every disk not yet in `datastore`,
   * all switched together — to `datastore` while it keeps running (disk-mover.ts has the
   * steps). Resolves and rejects as `moveDisk` does; `ERR_SAME_DATASTORE` also when the home is
   * there already or every disk is (then nothing would be copied live: a home alone is not a
   * migration).
   */
  async moveVm(request: MoveVmRequest, onEvent: (event: MigrationEvent) => void): Promise<VmMove> {
    return this.serialize(async () => {
      const vm = this.vms.entryOf(request.name);
      const to = this.registry.get(request.datastore);
      if (!to) throw notFound('datastore', request.datastore);
      this.checkVmMovable(vm, to);
      const entries = vm.config.disks
        .map((disk) => this.entryOf(disk))
        .filter((entry) => entry.datastore.name !== to.name);
      const from = vm.datastore;
      const home = { vm: request.name, from };
      const prepared = await this.prepare(request, { entries, to, home }, onEvent);
      const disks = entries.map((entry) => entry.descriptor.name);
      this.log.info(
        { vm: request.name, disks, from: from.name, to: to.name, move: prepared.id },
        'VM move started',
      );
      const done = prepared.run().then(async (result): Promise<VmMoveResult> => {
        this.vms.table.set({ config: vm.config, datastore: to });
        await this.vms.runtime
          .moveConsole(request.name, homePath(to, request.name))
          .catch((error: unknown) => {
            this.log.warn(
              { vm: request.name, err: error },
              'the console could not follow the home',
            );
          });
        return { ...result, vm: request.name, disks, from: from.name, to: to.name };
      });
      const move = this.track(prepared, done, disks);
      this.vmMoves.set(request.name, move);
      void done.catch(() => undefined).finally(() => this.vmMoves.delete(request.name));
      return move;
    });
  }

  /**
   * Starts moving VM `name` to another host (vm-motion.ts has the steps): its home, its disks
   * and, while it runs, its memory, with one switchover. Rejects at once for an unknown VM or
   * host, a VM or disk already moving, a disk that lives elsewhere already, a network the peer
   * lacks, or a peer that refuses.
   */
  async moveVmToHost(
    request: MoveVmToHostRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<VmMove> {
    return this.serialize(async () => {
      const vm = this.vms.entryOf(request.name);
      const peer = this.peerLink(request.host);
      if (!peer) {
        throw new HostError(
          HostErrorCode.NotFound,
          `no host named ${request.host}; add it with: ferry host add ${request.host} URL --key-file FILE`,
        );
      }
      this.checkVmNotMoving(vm);
      const entries = vm.config.disks.map((disk) => this.entryOf(disk));
      const runtime = this.vms.runtime;
      const qemu = runtime.isRunning(request.name) ? runtime.processOf(request.name) : undefined;
      if (qemu !== undefined && (await qemu.status()) !== 'running') {
        throw new HostError(
          HostErrorCode.VmRunning,
          `VM ${request.name} is ${await qemu.status()}, not running; resume or stop it before moving it`,
        );
      }
      const prepared = await prepareVmMotion(
        {
          exports: this.exports,
          journal: this.journal,
          log: this.log,
          ...this.crashSeam(),
          forgetVm: async (moved) => {
            await removeHome(homePath(moved.datastore, moved.config.name));
            this.vms.table.delete(moved.config.name);
          },
        },
        {
          vm,
          entries,
          home: homePath(vm.datastore, request.name),
          qemu,
          peer,
          selfName: this.hostName,
          ...(request.datastore === undefined ? {} : { datastore: request.datastore }),
          ...(request.datastoreMap === undefined ? {} : { datastoreMap: request.datastoreMap }),
          ...(request.networkMap === undefined ? {} : { networkMap: request.networkMap }),
          method: request.method ?? METHOD_DEFAULT,
          speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
          ...(request.provisioning === undefined ? {} : { provisioning: request.provisioning }),
          tuning: { mirrorMode: 'auto', ...request.tuning },
          ...(request.chunkBytes === undefined ? {} : { chunkBytes: request.chunkBytes }),
          ...(request.connections === undefined ? {} : { connections: request.connections }),
          maxDowntimeMs: request.maxDowntimeMs ?? MAX_DOWNTIME_DEFAULT_MS,
          tlsDir: join(runtime.filesOf(request.name).dir, 'tls'),
          closing: this.closing.signal,
        },
        onEvent,
      );
      const disks = entries.map((entry) => entry.descriptor.name);
      const from = vm.datastore.name;
      const to = `${request.host}:${request.datastore ?? 'default'}`;
      this.log.info(
        {
          vm: request.name,
          disks,
          host: request.host,
          move: prepared.id,
          running: qemu !== undefined,
        },
        'cross-host VM move started',
      );
      const done = prepared
        .run()
        .then((result): VmMoveResult => ({ ...result, vm: request.name, disks, from, to }));
      const move = this.track(prepared, done, disks);
      this.vmMoves.set(request.name, move);
      void done.catch(() => undefined).finally(() => this.vmMoves.delete(request.name));
      return move;
    });
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
    const local = await Promise.all(this.exports.all().map((entry) => this.describeDisk(entry)));
    return [...local, ...this.exports.allPassThroughs().map(describePassThrough)];
  }

  async getDisk(name: string): Promise<DiskInfo> {
    const passThrough = this.exports.passThrough(name);
    if (passThrough !== undefined) return describePassThrough(passThrough);
    return this.describeDisk(this.entryOf(name));
  }

  /** The guest I/O counters of disk `name` (the Stats filter's snapshot). */
  diskStats(name: string): StatsSnapshot {
    return this.entryOf(name).stack.stats.snapshot();
  }

  /** Registers directory `path` (absolute) as a datastore and serves the disks already in it. */
  async addDatastore(name: string, path: string): Promise<DatastoreInfo> {
    return this.serialize(async () => {
      const datastore = await this.registry.add(name, path);
      await this.openDatastore(datastore);
      this.log.info({ datastore: name, path: datastore.path }, 'datastore added');
      return this.describeDatastore(datastore);
    });
  }

  async listDatastores(): Promise<DatastoreInfo[]> {
    return Promise.all(this.registry.list().map((datastore) => this.describeDatastore(datastore)));
  }

  async getDatastore(name: string): Promise<DatastoreInfo> {
    const datastore = this.registry.get(name);
    if (!datastore) throw notFound('datastore', name);
    return this.describeDatastore(datastore);
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
    const moves = new Set(this.moves.values());
    for (const move of moves) move.migration.cancel();
    await Promise.all([...moves].map((move) => move.done.catch(() => undefined)));
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
    await this.lock.release();
    this.log.info({ dataDir: this.dataDir }, 'agent closed');
    if (failures.length > 0) throw failures[0];
  }

  /** Journals and prepares a move of `spec.entries` (and a VM's home) with the request's options. */
  private prepare(
    request: MoveDiskRequest | MoveVmRequest,
    spec: Pick<MoveSpec, 'entries' | 'to' | 'home'>,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<PreparedMove> {
    return prepareMove(
      {
        exports: this.exports,
        journal: this.journal,
        log: this.log,
        ...this.crashSeam(),
      },
      {
        ...spec,
        method: request.method ?? METHOD_DEFAULT,
        speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
        ...(request.provisioning === undefined ? {} : { provisioning: request.provisioning }),
        ...(request.tuning === undefined ? {} : { tuning: request.tuning }),
        ...(request.chunkBytes === undefined ? {} : { chunkBytes: request.chunkBytes }),
      },
      onEvent,
    );
  }

  /** Marks `disks` busy until `done` settles. */
  private track<R extends MoveOutcome>(
    prepared: PreparedMove,
    outcome: Promise<R>,
    disks: readonly string[],
  ): Move<R> {
    const done = outcome.finally(() => {
      for (const disk of disks) this.moves.delete(disk);
    });
    // The caller owns `done`; this only keeps a failure from counting as unhandled meanwhile.
    done.catch(() => undefined);
    const move: Move<R> = { id: prepared.id, migration: prepared.migration, done };
    for (const disk of disks) this.moves.set(disk, move);
    return move;
  }

  /** The datastore of this host with identity `id`: the same directory as a peer's (shared). */
  private async datastoreWithIdentity(id: string): Promise<Datastore | undefined> {
    for (const datastore of this.registry.list()) {
      const identity = await datastore.identity().catch(() => undefined);
      if (identity === id) return datastore;
    }
    return undefined;
  }

  private checkNotHeld(name: string): void {
    if (this.held.has(name)) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `disk ${name} is held until its peer host says whether an interrupted move committed`,
      );
    }
  }

  /** The one busy check of a disk: held after a crash, or a move under way (`which`: whose). */
  private checkNotMoving(name: string, which = ''): void {
    this.checkNotHeld(name);
    const busy = this.moves.get(name);
    if (busy) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `disk ${name} ${which}is being moved (job ${busy.id}); wait for it or cancel it`,
      );
    }
  }

  private crashSeam(): { crashAt?: CrashPoint } {
    return this.crashAt === undefined ? {} : { crashAt: this.crashAt };
  }

  /**
   * The receiver committed a disk here: serve it under its name. If this host passed that disk
   * through to another host (it had moved away and now comes back), new connections get the
   * disk at once, and the old pass-through's guests are moved over once its requests drain —
   * not inside the commit, where they may be held by the very host that is committing.
   */
  private async publishReceived(
    descriptor: DiskDescriptor,
    datastore: Datastore,
    stack: DiskStack,
  ): Promise<void> {
    const old = this.exports.deletePassThrough(descriptor.name);
    this.exports.add(descriptor, datastore, stack);
    if (old === undefined) return;
    await old.tombstoneAt.removeTombstone(descriptor.name).catch((error: unknown) => {
      this.log.warn({ disk: descriptor.name, err: error }, 'could not remove the old tombstone');
    });
    void (async () => {
      await old.device.pause();
      const remote = old.device.repoint(stack.top);
      old.device.resume();
      await remote.close();
    })().catch((error: unknown) => {
      this.log.warn(
        { disk: descriptor.name, err: error },
        'the old pass-through could not be re-pointed',
      );
    });
  }

  /** Serves a pass-through for every disk of `datastore` that moved to another host. */
  private async openPassThroughs(datastore: Datastore): Promise<void> {
    for (const tombstone of await datastore.remoteTombstones()) {
      if (this.exports.lookup(tombstone.name) !== undefined) {
        this.warn(
          { datastore: datastore.name, disk: tombstone.name },
          `disk ${tombstone.name} moved to host ${tombstone.host} is not passed through from datastore ${datastore.name}: the name is taken here`,
        );
        continue;
      }
      const device = new Switch(
        this.remoteDisk(tombstone.name, tombstone.host ?? '', tombstone.sizeBytes ?? 0),
      );
      this.exports.addPassThrough(passThroughOf(tombstone, datastore, device));
    }
  }

  /** A disk that lives on `host` (pass-through.ts, `remoteDisk`), reached through this host's peers. */
  private remoteDisk(name: string, host: string, sizeBytes: number): RemoteDevice {
    return remoteDisk({ name, host, sizeBytes, peerNamed: this.peerLink });
  }

  /**
   * Cross-host moves whose commit outcome the peer could not tell at start: each disk is served
   * with its guest I/O held, and the peer is asked again until it answers (never guessed).
   */
  private async holdUnresolved(outcomes: readonly RemoteOutcome[]): Promise<void> {
    for (const outcome of outcomes) {
      if (outcome.outcome !== 'held' || outcome.record === undefined) continue;
      const entry = this.exports.get(outcome.disk);
      if (entry === undefined) continue;
      await entry.stack.top.pause();
      this.held.add(outcome.disk);
      void this.resolveHeld(entry, outcome.record).catch((error: unknown) => {
        this.log.error({ disk: outcome.disk, err: error }, 'resolving a held move failed');
      });
    }
  }

  private async resolveHeld(entry: DiskEntry, record: MoveRecord): Promise<void> {
    const disk = record.disks[0];
    const host = record.toHost ?? '';
    if (disk === undefined) return;
    const release = (): boolean => this.held.delete(disk.disk);
    for (let attempt = 0; !this.closing.signal.aborted; attempt += 1) {
      const peer = this.peerLink(host);
      const state = peer === undefined ? undefined : await askPeer(peer, record, disk);
      if (state === 'aborted') {
        await this.journal.remove(record.id);
        release();
        entry.stack.top.resume();
        this.warn(
          { disk: disk.disk },
          `host ${host} had not committed disk ${disk.disk}: it is served here again`,
        );
        return;
      }
      if (state === 'committed') {
        await this.serialize(async () => {
          const device = this.remoteDisk(disk.disk, host, entry.descriptor.sizeBytes);
          entry.stack.top.repoint(device);
          this.exports.delete(disk.disk);
          await entry.stack.raw.close().catch(() => undefined);
          await finishRemote(
            {
              journal: this.journal,
              log: this.log,
              datastoreNamed: (name) => this.registry.get(name),
              peerNamed: this.peerLink,
            },
            record,
            disk,
            entry.datastore,
            peer,
          );
          // What finishRemote has just written beside the old copy.
          const tombstone: Tombstone = {
            name: disk.disk,
            datastore: record.to,
            generation: disk.generation + 1,
            host,
            sizeBytes: entry.descriptor.sizeBytes,
          };
          this.exports.addPassThrough(passThroughOf(tombstone, entry.datastore, entry.stack.top));
          release();
          entry.stack.top.resume();
        });
        this.warn(
          { disk: disk.disk },
          `host ${host} confirms it committed disk ${disk.disk}: its export here passes through`,
        );
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * (attempt + 1))));
    }
  }

  /**
   * The QEMU side of VM moves a crash interrupted (vm-motion-recovery.ts), in the background:
   * it needs this agent serving the disks, which it does once `open` has returned.
   */
  private driveVmMotions(pending: readonly PendingVmMotion[]): void {
    for (const motion of pending) {
      const vm = motion.record.vm ?? '';
      this.recovering.add(vm);
      // The VM's QEMU is taken back first; then it is this agent's to drive.
      void this.vms
        .whenAdopted()
        .then(() =>
          driveVmMotion(
            {
              journal: this.journal,
              log: this.log,
              datastoreNamed: (name) => this.registry.get(name),
              peerNamed: this.peerLink,
              qemuOf: (name) =>
                this.vms.runtime.isRunning(name) ? this.vms.runtime.processOf(name) : undefined,
              forgetVm: (record) => this.serialize(() => this.forgetMovedVm(record)),
            },
            motion,
          ),
        )
        .catch((error: unknown) => {
          this.log.error({ vm, err: error }, `finishing VM ${vm}'s interrupted move failed`);
        })
        .finally(() => this.recovering.delete(vm));
    }
  }

  /** VM `record.vm` runs at the peer now: its home, its record and its disks' pass-throughs go. */
  private async forgetMovedVm(record: MoveRecord): Promise<void> {
    for (const disk of record.disks) {
      const passThrough = this.exports.passThrough(disk.disk);
      if (passThrough !== undefined) await this.forgetPassThrough(passThrough);
    }
    const vm = this.vms.table.get(record.vm ?? '');
    if (vm === undefined) return;
    await removeHome(homePath(vm.datastore, vm.config.name));
    this.vms.table.delete(vm.config.name);
  }

  private checkVmMovable(vm: VmEntry, to: Datastore): void {
    const name = vm.config.name;
    if (vm.datastore.name === to.name) {
      throw new HostError(
        HostErrorCode.SameDatastore,
        `VM ${name} is already in datastore ${to.name}; name another datastore`,
      );
    }
    this.checkVmNotMoving(vm);
    const entries = vm.config.disks.map((disk) => this.entryOf(disk));
    if (entries.every((entry) => entry.datastore.name === to.name)) {
      throw new HostError(
        HostErrorCode.SameDatastore,
        `every disk of VM ${name} is already in datastore ${to.name}, so there is nothing to move live`,
      );
    }
  }

  /** `ERR_DISK_BUSY` if a move holds VM `vm` or any of its disks. */
  private checkVmNotMoving(vm: VmEntry): void {
    const name = vm.config.name;
    if (this.recovering.has(name) || this.vms.runtime.isAdopting(name)) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `VM ${name} is being taken back after the agent's restart (its QEMU, or a move a restart interrupted); wait for it`,
      );
    }
    const busy = this.vmMoves.get(name);
    if (busy) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `VM ${name} is being moved (job ${busy.id}); wait for it or cancel it`,
      );
    }
    for (const disk of vm.config.disks) this.checkNotMoving(disk, `of VM ${name} `);
  }

  /** Opens every disk of `datastore`, skipping with a warning whatever cannot be served. */
  private async openDatastore(datastore: Datastore): Promise<void> {
    let scan: Awaited<ReturnType<Datastore['scan']>>;
    try {
      scan = await datastore.scan();
    } catch (error) {
      this.warn({ datastore: datastore.name }, errorMessageOf(error));
      return;
    }
    for (const problem of scan.problems) {
      const isOrphan = problem.code === ORPHAN_IMAGE;
      const message = isOrphan ? problem.message : `a disk is skipped: ${problem.message}`;
      this.warn({ datastore: datastore.name, file: problem.file }, message);
    }
    for (const descriptor of scan.descriptors) {
      if (descriptor.host !== undefined && descriptor.host !== this.hostName) {
        // A shared datastore: that host serves this disk.
        this.log.info(
          { datastore: datastore.name, disk: descriptor.name, host: descriptor.host },
          `disk ${descriptor.name} in shared datastore ${datastore.name} is served by host ${descriptor.host}`,
        );
        continue;
      }
      const twin = this.exports.get(descriptor.name);
      if (twin) {
        this.warn(
          { datastore: datastore.name, disk: descriptor.name },
          `disk ${descriptor.name} in datastore ${datastore.name} is skipped: a disk of that name is already served from datastore ${twin.datastore.name}`,
        );
        continue;
      }
      await this.publish(descriptor, datastore).catch((error: unknown) => {
        this.warn(
          { datastore: datastore.name, disk: descriptor.name },
          `disk ${descriptor.name} is skipped: ${errorMessageOf(error)}`,
        );
      });
    }
    await this.openPassThroughs(datastore).catch((error: unknown) => {
      this.warn(
        { datastore: datastore.name },
        `pass-throughs are skipped: ${errorMessageOf(error)}`,
      );
    });
    await this.vms.open(datastore).catch((error: unknown) => {
      this.warn({ datastore: datastore.name }, `VMs are skipped: ${errorMessageOf(error)}`);
    });
  }

  private async publish(descriptor: DiskDescriptor, datastore: Datastore): Promise<DiskEntry> {
    const stack = await openDiskStack(datastore.imagePath(descriptor), descriptor);
    return this.exports.add(descriptor, datastore, stack);
  }

  /** Publishes a disk just written; if it cannot be opened its files are removed again. */
  private async publishNew(descriptor: DiskDescriptor, datastore: Datastore): Promise<DiskEntry> {
    try {
      return await this.publish(descriptor, datastore);
    } catch (error) {
      await datastore.removeDisk(descriptor).catch((cleanup: unknown) => {
        this.log.warn(
          { disk: descriptor.name, err: cleanup },
          'could not remove the disk that failed to open',
        );
      });
      throw error;
    }
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

  private async describeDisk(entry: DiskEntry): Promise<DiskInfo> {
    const { descriptor, datastore } = entry;
    const image = datastore.imagePath(descriptor);
    return {
      name: descriptor.name,
      datastore: datastore.name,
      sizeBytes: descriptor.sizeBytes,
      provisioning: descriptor.provisioning,
      // A listing must not fail because one image went missing behind the agent's back (its
      // open descriptor still serves it); the null says so.
      allocatedBytes: await statAllocatedBytes(image).catch(() => null),
      generation: descriptor.generation,
      image,
      createdAt: descriptor.createdAt,
      host: null,
    };
  }

  private async describeDatastore(datastore: Datastore): Promise<DatastoreInfo> {
    const diskCount = this.exports
      .all()
      .filter((entry) => entry.datastore.name === datastore.name).length;
    try {
      const space = await datastore.space();
      return { name: datastore.name, path: datastore.path, isAvailable: true, ...space, diskCount };
    } catch (error) {
      if (errorCodeOf(error) !== HostErrorCode.DatastoreUnavailable) throw error;
      return {
        name: datastore.name,
        path: datastore.path,
        isAvailable: false,
        capacityBytes: null,
        freeBytes: null,
        diskCount,
      };
    }
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

function describePassThrough(entry: PassThrough): DiskInfo {
  return {
    name: entry.name,
    datastore: entry.datastore,
    sizeBytes: entry.sizeBytes,
    provisioning: 'thin',
    allocatedBytes: null,
    generation: entry.generation,
    image: '',
    createdAt: '',
    host: entry.host,
  };
}

function notFound(kind: 'disk' | 'datastore' | 'VM', name: string): HostError {
  return new HostError(HostErrorCode.NotFound, `no ${kind} named ${name}`);
}
