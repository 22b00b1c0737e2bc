/**
 * An agent for the job layer's tests: it implements the two calls the job manager makes, with
 * the agent's contract (errors for unknown names, the same datastore, a busy disk), and moves
 * each disk with a real `Migration` between MemoryDevices (the migration bench), so jobs run,
 * fail and roll back for real. A `Gate` on the destination holds the copy where a test needs a
 * job to stay running.
 */
import type { BlockDevice, WriteOptions, ZeroOptions } from '../../src/block/device.js';
import type { BlockErrorCode } from '../../src/block/errors.js';
import { FaultInjector } from '../../src/block/fault.js';
import { PassThrough } from '../../src/block/filter.js';
import type { JobAgent, ResumableMove } from '../../src/control/job-manager.js';
import type {
  DiskMove,
  MoveDiskRequest,
  MoveResult,
  VmInfo,
  VmMove,
} from '../../src/host/agent.js';
import { HostError, HostErrorCode } from '../../src/host/errors.js';
import { Migration, type MigrationEvent } from '../../src/migrate/migration.js';
import { type BenchDisk, makeBenchDisk, prng } from '../migrate/harness.js';

/** Holds writes and zeroes while closed; `open()` lets them (and later ones) through. */
export class Gate extends PassThrough {
  /** Resolves once a write or zero is held (or passes, when open). */
  readonly reached: Promise<void>;
  private readonly opened: Promise<void>;
  private release: () => void = () => {};
  private signalReached: () => void = () => {};

  constructor(next: BlockDevice, isOpen: boolean) {
    super(next);
    this.opened = isOpen
      ? Promise.resolve()
      : new Promise((resolve) => {
          this.release = resolve;
        });
    this.reached = new Promise((resolve) => {
      this.signalReached = resolve;
    });
  }

  open(): void {
    this.release();
  }

  override async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    await this.pass();
    return this.next.write(offset, data, options);
  }

  override async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    await this.pass();
    return this.next.writeZeroes(offset, length, options);
  }

  private async pass(): Promise<void> {
    this.signalReached();
    await this.opened;
  }
}

/** A Migration that remembers the speeds it was given (and applies them). */
class RecordingMigration extends Migration {
  readonly speeds: number[] = [];

  override setSpeed(bytesPerSecond: number): void {
    this.speeds.push(bytesPerSecond);
    super.setSpeed(bytesPerSecond);
  }
}

export interface FakeDisk {
  datastore: string;
  readonly sizeBytes: number;
}

/** How the next move's destination behaves. */
export interface NextMove {
  /** Hold the copy until `gates[i].open()`. */
  readonly isGated?: boolean;
  /** Fail destination writes with this code once `afterBytes` were written. */
  readonly fault?: { readonly code: BlockErrorCode; readonly afterBytes: number };
}

export class FakeAgent implements JobAgent {
  readonly disks = new Map<string, FakeDisk>();
  readonly datastores: ReadonlySet<string>;
  readonly benches: BenchDisk[] = [];
  readonly gates: Gate[] = [];
  readonly migrations: RecordingMigration[] = [];
  readonly requests: MoveDiskRequest[] = [];
  next: NextMove = {};
  /** Every move's destination is gated (`gates[i].open()`), not only the next one's. */
  isGatingAll = false;
  private readonly busy = new Set<string>();
  private moveCount = 0;

  constructor(datastores: readonly string[], disks: Record<string, FakeDisk>) {
    this.datastores = new Set(datastores);
    for (const [name, disk] of Object.entries(disks)) this.disks.set(name, { ...disk });
  }

  async getDatastore(name: string): Promise<{ name: string }> {
    if (!this.datastores.has(name)) {
      throw new HostError(HostErrorCode.NotFound, `no datastore named ${name}`);
    }
    return { name };
  }

  async getDisk(name: string): Promise<FakeDisk> {
    const disk = this.disks.get(name);
    if (!disk) throw new HostError(HostErrorCode.NotFound, `no disk named ${name}`);
    return { ...disk };
  }

  /** The fake knows no VMs (test/host/vm-move.test.ts moves VMs on a real agent). */
  async getVm(name: string): Promise<VmInfo> {
    throw new HostError(HostErrorCode.NotFound, `no VM named ${name}`);
  }

  async moveVm(request: { name: string }): Promise<VmMove> {
    throw new HostError(HostErrorCode.NotFound, `no VM named ${request.name}`);
  }

  async moveDisk(
    request: MoveDiskRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    const disk = this.disks.get(request.name);
    if (!disk) throw new HostError(HostErrorCode.NotFound, `no disk named ${request.name}`);
    if (!this.datastores.has(request.datastore)) {
      throw new HostError(HostErrorCode.NotFound, `no datastore named ${request.datastore}`);
    }
    if (disk.datastore === request.datastore) {
      throw new HostError(
        HostErrorCode.SameDatastore,
        `disk ${request.name} is already in datastore ${request.datastore}`,
      );
    }
    if (this.busy.has(request.name)) {
      throw new HostError(HostErrorCode.DiskBusy, `disk ${request.name} is being moved`);
    }
    this.requests.push(request);
    this.moveCount += 1;
    return this.run(`move-${this.moveCount}`, request, disk, onEvent);
  }

  /** Runs move `id` of `disk` as `request` asks: a real migration to a fresh bench disk. */
  protected async run(
    id: string,
    request: MoveDiskRequest,
    disk: FakeDisk,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    const bench = await this.makeBench(request.name, disk.sizeBytes);
    const migration = new RecordingMigration([bench.disk], {
      method: request.method ?? 'mirror',
      chunkBytes: 64 * 1024,
      inFlightMax: 4,
      tuning: { granularityBytes: 16 * 1024 },
      speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
      commit: async () => {},
      onEvent,
    });
    this.migrations.push(migration);
    this.busy.add(request.name);
    const from = disk.datastore;
    // Started before moveDisk resolves, as the agent does: its first events precede the job.
    const done = migration
      .run()
      .then((result): MoveResult => {
        disk.datastore = request.datastore;
        return { ...result, disk: request.name, from, to: request.datastore };
      })
      .finally(() => this.busy.delete(request.name));
    return { id, migration, done };
  }

  private async makeBench(name: string, sizeBytes: number): Promise<BenchDisk> {
    const next = this.next;
    this.next = {};
    const bench = await makeBenchDisk(name, {
      sizeBytes,
      random: prng(this.benches.length + 1),
      delayMaxMs: 0,
      filledFraction: 1,
      wrapTarget: (device) => {
        let target = device;
        if (next.fault) target = new FaultInjector(target, next.fault);
        const gate = new Gate(target, next.isGated !== true && !this.isGatingAll);
        this.gates.push(gate);
        return gate;
      },
    });
    this.benches.push(bench);
    return bench;
  }
}

/**
 * A fake agent that came back from a stop with interrupted moves in its journal (issue 10):
 * `resumeMove` continues one as a real migration of the same id, `abandonMove` rolls it back.
 */
export class ResumingFakeAgent extends FakeAgent {
  readonly offered: ResumableMove[] = [];
  readonly resumed: string[] = [];
  readonly abandoned: string[] = [];

  resumableMoves(): readonly ResumableMove[] {
    return this.offered.filter((move) => !this.resumed.includes(move.id));
  }

  async resumeMove(id: string, onEvent: (event: MigrationEvent) => void): Promise<DiskMove> {
    const move = this.offered.find((each) => each.id === id);
    if (move === undefined)
      throw new HostError(HostErrorCode.NotFound, `no interrupted move ${id}`);
    const disk = this.disks.get(move.disk);
    if (!disk) throw new HostError(HostErrorCode.NotFound, `no disk named ${move.disk}`);
    this.resumed.push(id);
    return this.run(
      id,
      { name: move.disk, datastore: move.to, method: move.method },
      disk,
      onEvent,
    );
  }

  async abandonMove(id: string): Promise<void> {
    this.abandoned.push(id);
  }
}
