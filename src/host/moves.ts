import { join } from 'node:path';
import type { Provisioning } from '../block/raw-file.js';
import { MigrateErrorCode } from '../migrate/errors.js';
import {
  METHOD_DEFAULT,
  METHOD_NAMES,
  type MethodName,
  type MethodTuning,
} from '../migrate/method.js';
import type { Migration, MigrationEvent, MigrationResult } from '../migrate/migration.js';
import { assert } from '../util/assert.js';
import { errorCodeOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { CopyStateFile } from './copy-state-file.js';
import type { Datastore } from './datastore.js';
import {
  type CrashPoint,
  type MoverHost,
  type MoveSpec,
  type PreparedMove,
  prepareMove,
} from './disk-mover.js';
import { HostError, HostErrorCode, notFound } from './errors.js';
import type { DiskEntry, ExportTable } from './export-table.js';
import type { MoveJournal, MoveRecord } from './move-journal.js';
import {
  abortAtPeer,
  type PeerLink,
  prepareRemoteMove,
  prepareResumedRemoteMove,
} from './remote-mover.js';
import { homePath, removeHome } from './vm-home.js';
import { prepareVmMotion, type VmDowntime } from './vm-motion.js';
import type { VmService } from './vm-service.js';
import type { VmEntry } from './vm-table.js';

/** QEMU's own default `downtime-limit`, which vMotion's sub-second stun also aims under. */
const MAX_DOWNTIME_DEFAULT_MS = 300;

/**
 * The agent's moves: disks and VMs to another datastore (disk-mover.ts) or to another host
 * (remote-mover.ts, vm-motion.ts), while they stay served. It knows which disks and VMs a move
 * holds, and refuses a second move, or a change, of anything busy (`ERR_DISK_BUSY`).
 *
 * Each move starts in the agent's change queue (`serialize`): its checks and its journaling run
 * one at a time with every other change; the copy itself then runs outside the queue.
 */
export interface MovesHost {
  readonly exports: ExportTable;
  readonly journal: MoveJournal;
  readonly log: Logger;
  readonly vms: VmService;
  /** This host's name for itself, which peers record. */
  readonly hostName: string;
  /** Test seam (`FERRY_CRASH_AT`): every disk move kills the agent at this point. */
  readonly crashAt: CrashPoint | undefined;
  /** Aborted at close: stops the waits of cross-host moves whose peer does not answer. */
  readonly closing: AbortSignal;
  datastoreNamed(name: string): Datastore | undefined;
  datastores(): readonly Datastore[];
  peerNamed(name: string): PeerLink | undefined;
  /** The served local disk `name` (`ERR_NOT_FOUND`, or `ERR_REMOTE_DISK` for a pass-through). */
  entryOf(name: string): DiskEntry;
  /** `ERR_DISK_BUSY` for a disk held until a peer resolves its interrupted move (held-disks.ts). */
  checkNotHeld(name: string): void;
  /** Holds disk `name` whose cross-host move ended with its commit unknown (held-disks.ts). */
  keepHeld(name: string): void;
  /** Whether VM `vm`'s move a restart interrupted is still being driven (interrupted-vm-motions.ts). */
  isRecovering(vm: string): boolean;
  serialize<T>(task: () => Promise<T>): Promise<T>;
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

export class Moves {
  /** Moves in progress, by disk name (a VM's move under each of its disks). */
  private readonly moves = new Map<string, Move<MoveOutcome>>();
  /** VM moves in progress, by VM name. */
  private readonly vmMoves = new Map<string, VmMove>();

  constructor(private readonly host: MovesHost) {}

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
    return this.host.serialize(async () => {
      const entry = this.host.entryOf(request.name);
      const to = this.host.datastoreNamed(request.datastore);
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
      this.host.log.info(
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
   * Runs a move prepared elsewhere (a resumed one: resumable-moves.ts) of one disk, and holds the
   * disk busy as `moveDisk` does until it settles.
   */
  adopt(prepared: PreparedMove, entry: DiskEntry, to: Datastore): DiskMove {
    const name = entry.descriptor.name;
    this.checkNotMoving(name);
    const from = entry.datastore.name;
    const done = prepared
      .run()
      .then((result): MoveResult => ({ ...result, disk: name, from, to: to.name }));
    return this.track(prepared, done, [name]);
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
    return this.host.serialize(async () => {
      const entry = this.host.entryOf(request.name);
      const peer = this.peerOf(request.host);
      this.checkNotMoving(request.name);
      const owner = this.host.vms.ownerOf(request.name);
      if (owner) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `disk ${request.name} belongs to VM ${owner.config.name}; move the VM (ferry migrate ${owner.config.name} --vm) instead`,
        );
      }
      const from = entry.datastore.name;
      const prepared = await prepareRemoteMove(
        this.moverHost(),
        {
          entry,
          peer,
          selfName: this.host.hostName,
          ...(request.datastore === undefined ? {} : { datastore: request.datastore }),
          ...crossHostOptions(request),
          closing: this.host.closing,
          sharedDatastore: (id) => this.datastoreWithIdentity(id),
        },
        onEvent,
      );
      const to = `${request.host}:${request.datastore ?? 'default'}`;
      this.host.log.info(
        { disk: request.name, from, host: request.host, move: prepared.id, method: request.method },
        'cross-host disk move started',
      );
      return this.runToHost(prepared, request.name, from, to);
    });
  }

  /**
   * Continues a cross-host move a crash interrupted before it asked for its commit, from its
   * copy state (remote-mover.ts, `prepareResumedRemoteMove`); called by resumable-moves.ts in
   * the agent's change queue. Rejects, leaving nothing changed, when the peer no longer has
   * the receive or cannot be reached.
   */
  async resumeToHost(
    record: MoveRecord,
    file: CopyStateFile,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    const [disk] = record.disks;
    const toHost = record.toHost;
    assert(disk !== undefined && typeof toHost === 'string', `move ${record.id} is cross-host`);
    const entry = this.host.entryOf(disk.disk);
    const peer = this.peerOf(toHost);
    this.checkNotMoving(disk.disk);
    const method = METHOD_NAMES.includes(record.method as MethodName)
      ? (record.method as MethodName)
      : METHOD_DEFAULT;
    const provisioning = file.disks[0]?.provisioning;
    const prepared = await prepareResumedRemoteMove(
      this.moverHost(),
      {
        entry,
        peer,
        selfName: this.host.hostName,
        datastore: record.to,
        ...crossHostOptions({ name: disk.disk, host: toHost, method }),
        ...(provisioning === undefined ? {} : { provisioning }),
        closing: this.host.closing,
        sharedDatastore: async () => undefined,
      },
      record,
      file,
      onEvent,
    );
    const to = `${toHost}:${record.to}`;
    return this.runToHost(prepared, disk.disk, entry.datastore.name, to);
  }

  /** Tells the peer of an abandoned cross-host move to drop its copy (if it answers). */
  async abandonAtPeer(record: MoveRecord): Promise<void> {
    const peer = typeof record.toHost === 'string' ? this.host.peerNamed(record.toHost) : undefined;
    if (peer !== undefined) await abortAtPeer(this.moverHost(), peer, record.id);
  }

  /** Runs a prepared move of disk `name` to another host and holds the disk busy until it settles. */
  private runToHost(prepared: PreparedMove, name: string, from: string, to: string): DiskMove {
    const done = prepared
      .run()
      .then((result): MoveResult => ({ ...result, disk: name, from, to }))
      .catch((error: unknown) => {
        if (errorCodeOf(error) === MigrateErrorCode.CommitUnknown) this.host.keepHeld(name);
        throw error;
      });
    return this.track(prepared, done, [name]);
  }

  /**
   * Starts moving VM `name` — its home directory first, then every disk not yet in `datastore`,
   * all switched together — to `datastore` while it keeps running (disk-mover.ts has the
   * steps). Resolves and rejects as `moveDisk` does; `ERR_SAME_DATASTORE` also when the home is
   * there already or every disk is (then nothing would be copied live: a home alone is not a
   * migration).
   */
  async moveVm(request: MoveVmRequest, onEvent: (event: MigrationEvent) => void): Promise<VmMove> {
    return this.host.serialize(async () => {
      const vm = this.host.vms.entryOf(request.name);
      const to = this.host.datastoreNamed(request.datastore);
      if (!to) throw notFound('datastore', request.datastore);
      this.checkVmMovable(vm, to);
      const entries = vm.config.disks
        .map((disk) => this.host.entryOf(disk))
        .filter((entry) => entry.datastore.name !== to.name);
      const from = vm.datastore;
      const home = { vm: request.name, from };
      const prepared = await this.prepare(request, { entries, to, home }, onEvent);
      const disks = entries.map((entry) => entry.descriptor.name);
      this.host.log.info(
        { vm: request.name, disks, from: from.name, to: to.name, move: prepared.id },
        'VM move started',
      );
      return this.trackVm(request.name, prepared, this.runVmMove(prepared, vm, to, disks), disks);
    });
  }

  /**
   * Runs a move prepared elsewhere (a resumed one: resumable-moves.ts) of VM `name`'s `entries`
   * and home, and holds them busy as `moveVm` does until it settles.
   */
  adoptVm(
    prepared: PreparedMove,
    name: string,
    entries: readonly DiskEntry[],
    to: Datastore,
  ): VmMove {
    const vm = this.host.vms.entryOf(name);
    this.checkVmNotMoving(vm);
    const disks = entries.map((entry) => entry.descriptor.name);
    return this.trackVm(name, prepared, this.runVmMove(prepared, vm, to, disks), disks);
  }

  /** Runs a local VM move; once done, the VM's table entry and console follow its home. */
  private runVmMove(
    prepared: PreparedMove,
    vm: VmEntry,
    to: Datastore,
    disks: readonly string[],
  ): Promise<VmMoveResult> {
    const name = vm.config.name;
    const from = vm.datastore;
    return prepared.run().then(async (result): Promise<VmMoveResult> => {
      this.host.vms.table.set({ config: vm.config, datastore: to });
      await this.host.vms.runtime.moveConsole(name, homePath(to, name)).catch((error: unknown) => {
        this.host.log.warn({ vm: name, err: error }, 'the console could not follow the home');
      });
      return { ...result, vm: name, disks, from: from.name, to: to.name };
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
    return this.host.serialize(async () => {
      const vm = this.host.vms.entryOf(request.name);
      const peer = this.peerOf(request.host);
      this.checkVmNotMoving(vm);
      const entries = vm.config.disks.map((disk) => this.host.entryOf(disk));
      const runtime = this.host.vms.runtime;
      const qemu = runtime.isRunning(request.name) ? runtime.processOf(request.name) : undefined;
      const state = qemu === undefined ? 'stopped' : await qemu.status();
      if (qemu !== undefined && state !== 'running') {
        throw new HostError(
          HostErrorCode.VmRunning,
          `VM ${request.name} is ${state}, not running; resume or stop it before moving it`,
        );
      }
      const prepared = await prepareVmMotion(
        {
          ...this.moverHost(),
          forgetVm: async (moved) => {
            await removeHome(homePath(moved.datastore, moved.config.name));
            this.host.vms.table.delete(moved.config.name);
          },
        },
        {
          vm,
          entries,
          home: homePath(vm.datastore, request.name),
          qemu,
          peer,
          selfName: this.host.hostName,
          ...(request.datastore === undefined ? {} : { datastore: request.datastore }),
          ...(request.datastoreMap === undefined ? {} : { datastoreMap: request.datastoreMap }),
          ...(request.networkMap === undefined ? {} : { networkMap: request.networkMap }),
          ...crossHostOptions(request),
          maxDowntimeMs: request.maxDowntimeMs ?? MAX_DOWNTIME_DEFAULT_MS,
          tlsDir: join(runtime.filesOf(request.name).dir, 'tls'),
          closing: this.host.closing,
        },
        onEvent,
      );
      const disks = entries.map((entry) => entry.descriptor.name);
      const from = vm.datastore.name;
      const to = `${request.host}:${request.datastore ?? 'default'}`;
      this.host.log.info(
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
      return this.trackVm(request.name, prepared, done, disks);
    });
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
    const entries = vm.config.disks.map((disk) => this.host.entryOf(disk));
    if (entries.every((entry) => entry.datastore.name === to.name)) {
      throw new HostError(
        HostErrorCode.SameDatastore,
        `every disk of VM ${name} is already in datastore ${to.name}, so there is nothing to move live`,
      );
    }
  }

  /** `ERR_DISK_BUSY` if a move holds VM `vm` or any of its disks. */
  checkVmNotMoving(vm: VmEntry): void {
    const name = vm.config.name;
    if (this.host.isRecovering(name) || this.host.vms.runtime.isAdopting(name)) {
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

  /** The one busy check of a disk: held after a crash, or a move under way (`which`: whose). */
  checkNotMoving(name: string, which = ''): void {
    this.host.checkNotHeld(name);
    const busy = this.moves.get(name);
    if (busy) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `disk ${name} ${which}is being moved (job ${busy.id}); wait for it or cancel it`,
      );
    }
  }

  /** Journals and prepares a move of `spec.entries` (and a VM's home) with the request's options. */
  private prepare(
    request: MoveDiskRequest | MoveVmRequest,
    spec: Pick<MoveSpec, 'entries' | 'to' | 'home'>,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<PreparedMove> {
    return prepareMove(
      this.moverHost(),
      {
        ...spec,
        ...copyOptions(request),
        ...(request.tuning === undefined ? {} : { tuning: request.tuning }),
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
    for (const datastore of this.host.datastores()) {
      const identity = await datastore.identity().catch(() => undefined);
      if (identity === id) return datastore;
    }
    return undefined;
  }

  /** What a mover needs of this host: the exports, the journal, the log, the crash seam. */
  /** What a disk move needs of the host (disk-mover.ts). */
  moverHost(): MoverHost {
    const { exports, journal, log, crashAt } = this.host;
    return { exports, journal, log, ...(crashAt === undefined ? {} : { crashAt }) };
  }

  /** Peer host `name`; `ERR_NOT_FOUND` saying how to add it. */
  private peerOf(name: string): PeerLink {
    const peer = this.host.peerNamed(name);
    if (peer === undefined) {
      throw new HostError(
        HostErrorCode.NotFound,
        `no host named ${name}; add it with: ferry host add ${name} URL --key-file FILE`,
      );
    }
    return peer;
  }

  /** Marks VM `name` and its `disks` busy until `done` settles. */
  private trackVm(
    name: string,
    prepared: PreparedMove,
    done: Promise<VmMoveResult>,
    disks: readonly string[],
  ): VmMove {
    const move = this.track(prepared, done, disks);
    this.vmMoves.set(name, move);
    void move.done.catch(() => undefined).finally(() => this.vmMoves.delete(name));
    return move;
  }

  /**
   * Cancels every move in progress and waits for each to settle: one still copying is cancelled
   * (the guest stays on the source); one past its commit finishes.
   */
  async cancelAll(): Promise<void> {
    const moves = new Set(this.moves.values());
    for (const move of moves) move.migration.cancel();
    await Promise.all([...moves].map((move) => move.done.catch(() => undefined)));
  }
}

/** How a move copies, from a request's options: the method, the speed, the provisioning. */
function copyOptions(
  request: Pick<MoveDiskRequest, 'method' | 'speedBytesPerSecond' | 'provisioning' | 'chunkBytes'>,
): {
  method: MethodName;
  speedBytesPerSecond: number;
  provisioning?: Provisioning;
  chunkBytes?: number;
} {
  return {
    method: request.method ?? METHOD_DEFAULT,
    speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
    ...(request.provisioning === undefined ? {} : { provisioning: request.provisioning }),
    ...(request.chunkBytes === undefined ? {} : { chunkBytes: request.chunkBytes }),
  };
}

/**
 * Across a network the mirror runs asynchronously and turns synchronous when the link cannot
 * keep up (vSphere 5.1), unless the request says otherwise; and the peer is written on several
 * connections.
 */
function crossHostOptions(
  request: MoveDiskToHostRequest | MoveVmToHostRequest,
): ReturnType<typeof copyOptions> & { tuning: Partial<MethodTuning>; connections?: number } {
  return {
    ...copyOptions(request),
    tuning: { mirrorMode: 'auto', ...request.tuning },
    ...(request.connections === undefined ? {} : { connections: request.connections }),
  };
}
