import type { StatsSnapshot } from '../block/stats.js';
import type { DatastoreInfo, DiskInfo } from '../host/disk-info.js';
import type { VmInfo } from '../host/vm-service.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import {
  ClusterError,
  ClusterErrorCode,
  type ClusterRecord,
  type ClusterStore,
  type MaintenanceState,
} from './clusters.js';
import { type ClusterView, type DatastoreUsage, usageOf, viewOf } from './datastore-usage.js';
import { type DrsCluster, type DrsDatastore, type DrsResult, placeDisk, recommend } from './drs.js';
import type { JobManager } from './job-manager.js';
import type { JobRecord } from './job-record.js';
import { isTerminal } from './job-states.js';
import { LatencyWindow, totalsOf } from './latency-window.js';
import { MaintenanceMode, type PlannedMove } from './maintenance.js';

/** What DRS needs of the agent (host/agent.ts); tests may pass a fake. */
export interface DrsAgent {
  listDatastores(): Promise<DatastoreInfo[]>;
  listDisks(): Promise<DiskInfo[]>;
  listVms(): Promise<VmInfo[]>;
  diskStats(name: string): StatsSnapshot;
}

export interface DrsServiceOptions {
  /** Latency window; default 60 s. */
  readonly windowMs?: number;
  /** How often the service samples the disks' counters and checks clusters; default 5 s. */
  readonly tickMs?: number;
  readonly log?: Logger;
}

interface InFlight {
  readonly disks: ReadonlySet<string>;
  readonly moves: readonly { from: string; to: string; disks: readonly string[] }[];
}

const WINDOW_MS_DEFAULT = 60_000;
const TICK_MS_DEFAULT = 5_000;

/**
 * Clusters at work: measures usage and guest latency, recommends and applies moves (drs.ts),
 * drives maintenance mode (maintenance.ts), and places new disks. Moves go through the JobManager like any
 * migration, so they show in `ferry job list` and obey its limits.
 * How space is counted: datastore-usage.ts.
 */
export class DrsService {
  private readonly window: LatencyWindow;
  private readonly tickMs: number;
  private timer: NodeJS.Timeout | undefined;
  private unsubscribe: (() => void) | undefined;
  private readonly lastAppliedMs = new Map<string, number>();
  private isTicking = false;
  /** Maintenance mode of the clusters' datastores (maintenance.ts). */
  readonly maintenance: MaintenanceMode;

  constructor(
    private readonly agent: DrsAgent,
    readonly store: ClusterStore,
    private readonly jobs: JobManager | undefined,
    private readonly options: DrsServiceOptions = {},
  ) {
    this.window = new LatencyWindow(options.windowMs ?? WINDOW_MS_DEFAULT);
    this.tickMs = options.tickMs ?? TICK_MS_DEFAULT;
    this.maintenance = new MaintenanceMode(
      agent,
      store,
      {
        recommendations: (cluster) => this.recommendations(cluster),
        startMoves: (moves) => this.startMoves(moves),
        movingDisks: () => this.inFlight().disks,
        usage: () => this.usage(),
      },
      options.log,
    );
  }

  /**
   * Starts the periodic tick (sampling, maintenance progress, automatic clusters), and turns a
   * datastore's maintenance `on` as soon as the job that moved the last thing off it ends.
   */
  start(): void {
    if (this.timer !== undefined) return;
    this.timer = setInterval(() => void this.tick(), this.tickMs);
    this.timer.unref();
    this.unsubscribe = this.maintenance.watch(this.jobs);
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer);
    this.timer = undefined;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
  }

  /** Every datastore with its usage, maintenance state and cluster. */
  async usage(): Promise<DatastoreUsage[]> {
    const [datastores, disks] = await Promise.all([
      this.agent.listDatastores(),
      this.agent.listDisks(),
    ]);
    this.sample(disks);
    const maintenance = this.store.inMaintenance();
    return datastores.map((info) =>
      usageOf(info, disks, {
        maintenance: maintenance.get(info.name) ?? 'off',
        cluster: this.store.clusterOf(info.name),
        configuredCapacityBytes: this.store.capacityOf(info.name),
        window: this.window,
      }),
    );
  }

  async clusters(): Promise<ClusterView[]> {
    const usage = await this.usage();
    return this.store.list().map((record) => viewOf(record, usage));
  }

  async cluster(name: string): Promise<ClusterView> {
    const record = this.store.get(name);
    return viewOf(record, await this.usage());
  }

  /** Recommendations for one cluster, or for every cluster. */
  async recommendations(cluster?: string): Promise<DrsResult> {
    const records = cluster === undefined ? this.store.list() : [this.store.get(cluster)];
    const [usage, disks, vms] = await Promise.all([
      this.usage(),
      this.agent.listDisks(),
      this.agent.listVms(),
    ]);
    const busy = this.inFlight();
    const result: DrsResult = { recommendations: [], problems: [] };
    for (const record of records) {
      const one = recommend(this.snapshotOf(record, usage, disks, vms, busy));
      result.recommendations.push(...one.recommendations);
      result.problems.push(...one.problems);
    }
    return result;
  }

  /** Queues recommendations as migrations; `ids` picks some of them (unknown ids are refused). */
  async apply(cluster?: string, ids?: readonly string[]): Promise<JobRecord[]> {
    const { recommendations } = await this.recommendations(cluster);
    let chosen = recommendations;
    if (ids !== undefined) {
      const known = new Set(recommendations.map((one) => one.id));
      const unknown = ids.filter((id) => !known.has(id));
      if (unknown.length > 0) {
        throw new ClusterError(
          ClusterErrorCode.BadSetting,
          `no current recommendation ${unknown.join(', ')} (usage changed, or it was applied); ` +
            'list them again with `ferry drs recommend`',
        );
      }
      chosen = recommendations.filter((one) => ids.includes(one.id));
    }
    const { started, failures } = await this.startMoves(chosen);
    // Nothing started: say why, rather than an empty list that looks like "nothing to do".
    if (started.length === 0 && failures[0] !== undefined) throw failures[0].error;
    return started;
  }

  /** Maintenance mode (maintenance.ts): enters it and queues the moves off `datastore`. */
  enterMaintenance(
    datastore: string,
  ): Promise<{ state: MaintenanceState; jobs: JobRecord[]; problems: string[] }> {
    return this.maintenance.enter(datastore);
  }

  exitMaintenance(datastore: string): MaintenanceState {
    return this.maintenance.exit(datastore);
  }

  /** `ERR_MAINTENANCE` for a datastore in maintenance: it takes no new disks and no moves. */
  refuseIfInMaintenance(datastore: string): void {
    this.maintenance.refuse(datastore);
  }

  /**
   * The datastore a new disk of `sizeBytes` goes to when the request names `requested`: a
   * cluster's best member, or the datastore itself when it is not in maintenance.
   */
  async placeNewDisk(requested: string, sizeBytes: number): Promise<string> {
    if (!this.store.has(requested)) {
      this.refuseIfInMaintenance(requested);
      return requested;
    }
    const record = this.store.get(requested);
    const usage = await this.usage();
    const members = usage.filter((one) => record.datastores.includes(one.name));
    const best = placeDisk(members, sizeBytes, record.spaceThreshold);
    if (best === undefined) {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        `no member of cluster ${requested} can take ${sizeBytes} bytes and stay under its ` +
          `${(record.spaceThreshold * 100).toFixed(0)}% space threshold (or all are in maintenance); ` +
          `add a datastore with \`ferry cluster set ${requested} --datastores ...\` or free space`,
      );
    }
    return best.name;
  }

  /** One periodic step; never throws (failures are logged and retried next tick). */
  async tick(nowMs = Date.now()): Promise<void> {
    if (this.isTicking) return;
    this.isTicking = true;
    try {
      this.sample(await this.agent.listDisks());
      await this.maintenance.advance(nowMs);
      for (const record of this.store.list()) {
        if (record.automation !== 'automatic') continue;
        const last = this.lastAppliedMs.get(record.name) ?? 0;
        if (nowMs - last < record.intervalSeconds * 1000) continue;
        this.lastAppliedMs.set(record.name, nowMs);
        const started = await this.apply(record.name);
        if (started.length > 0) {
          this.options.log?.info(
            { cluster: record.name, jobs: started.map((job) => job.id) },
            'storage DRS applied its recommendations',
          );
        }
      }
    } catch (error) {
      this.options.log?.warn({ err: error }, 'storage DRS tick failed; trying again next tick');
    } finally {
      this.isTicking = false;
    }
  }

  /**
   * Starts each move. A move the job manager refuses (the disk is busy, the agent is closing) is
   * logged and reported in `failures`; the others still start.
   */
  private async startMoves(moves: readonly PlannedMove[]): Promise<{
    started: JobRecord[];
    failures: { what: string; error: unknown }[];
  }> {
    const jobs = this.requireJobs();
    const started: JobRecord[] = [];
    const failures: { what: string; error: unknown }[] = [];
    for (const move of moves) {
      try {
        started.push(
          await jobs.startMigration(
            move.vm === null
              ? { disk: move.disk, datastore: move.to }
              : { vm: move.vm, datastore: move.to },
          ),
        );
      } catch (error) {
        const what = move.vm === null ? `disk ${move.disk}` : `VM ${move.vm}`;
        this.options.log?.warn(
          { disk: move.disk, vm: move.vm, to: move.to, err: error },
          `storage DRS could not start moving ${what} to ${move.to}: ${errorMessageOf(error)}`,
        );
        failures.push({ what: `${what} to ${move.to}`, error });
      }
    }
    return { started, failures };
  }

  private requireJobs(): JobManager {
    if (this.jobs === undefined) {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        'this server runs no job manager, so it cannot move disks; use `ferry serve`',
      );
    }
    return this.jobs;
  }

  /**
   * Moves that a job is running (or has queued): DRS leaves their disks alone and counts their
   * bytes where they are going, so a pass while moves run does not ask for the same room twice.
   */
  private inFlight(): InFlight {
    const disks = new Set<string>();
    const moves: { from: string; to: string; disks: readonly string[] }[] = [];
    for (const job of this.jobs?.list() ?? []) {
      if (isTerminal(job.state)) continue;
      for (const disk of job.disks) disks.add(disk);
      disks.add(job.disk);
      moves.push({ from: job.from, to: job.to, disks: job.disks });
    }
    return { disks, moves };
  }

  private sample(disks: readonly DiskInfo[]): void {
    const now = Date.now();
    const names = new Set<string>();
    for (const disk of disks) {
      if (disk.host !== null) continue;
      names.add(disk.name);
      try {
        this.window.add(disk.name, totalsOf(this.agent.diskStats(disk.name), now));
      } catch {
        // Removed between the listing and now: it is gone from the next sample too.
        names.delete(disk.name);
      }
    }
    this.window.retain(names);
  }

  private snapshotOf(
    record: ClusterRecord,
    usage: readonly DatastoreUsage[],
    disks: readonly DiskInfo[],
    vms: readonly VmInfo[],
    busy: InFlight,
  ): DrsCluster {
    const vmOf = new Map<string, string>();
    for (const vm of vms) for (const disk of vm.disks) vmOf.set(disk, vm.name);
    const sizeOf = new Map(disks.map((disk) => [disk.name, disk.sizeBytes]));
    const shift = new Map<string, number>();
    for (const move of busy.moves) {
      const bytes = move.disks.reduce((sum, disk) => sum + (sizeOf.get(disk) ?? 0), 0);
      shift.set(move.from, (shift.get(move.from) ?? 0) - bytes);
      shift.set(move.to, (shift.get(move.to) ?? 0) + bytes);
    }
    const datastores: DrsDatastore[] = usage
      .filter((one) => record.datastores.includes(one.name))
      .map((one) => ({
        ...one,
        usedBytes: Math.max(0, one.usedBytes + (shift.get(one.name) ?? 0)),
      }));
    return {
      name: record.name,
      spaceThreshold: record.spaceThreshold,
      latencyThresholdMs: record.latencyThresholdMs,
      keepVmDisksTogether: record.keepVmDisksTogether,
      datastores,
      disks: disks
        .filter((disk) => disk.host === null && !busy.disks.has(disk.name))
        .filter((disk) => !busy.disks.has(vmOf.get(disk.name) ?? ''))
        .map((disk) => ({
          name: disk.name,
          sizeBytes: disk.sizeBytes,
          datastore: disk.datastore,
          vm: vmOf.get(disk.name) ?? null,
          iops: this.window.figuresOf(disk.name).iops,
        })),
    };
  }
}
