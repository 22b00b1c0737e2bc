import type { VmInfo } from '../host/vm-service.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import {
  ClusterError,
  ClusterErrorCode,
  type ClusterStore,
  type MaintenanceState,
} from './clusters.js';
import type { DatastoreUsage } from './datastore-usage.js';
import { type DrsResult, placeDisk, type Recommendation } from './drs.js';
import type { DrsAgent } from './drs-service.js';
import type { JobManager } from './job-manager.js';
import type { JobRecord } from './job-record.js';
import { isTerminal } from './job-states.js';

/** How long a datastore entering maintenance waits before its failed moves are tried again. */
const EVACUATE_RETRY_MS = 60_000;

/** A move to start, as storage DRS recommends it (a VM's home: `vm` set, `disk` its name). */
export type PlannedMove = Pick<Recommendation, 'vm' | 'disk' | 'to'>;

/** What maintenance needs of storage DRS (drs-service.ts): where things go, and how they move. */
export interface MaintenancePlanner {
  recommendations(cluster: string): Promise<DrsResult>;
  /** Starts each move as a job; the ones refused are in `failures`. */
  startMoves(moves: readonly PlannedMove[]): Promise<{
    started: JobRecord[];
    failures: { what: string; error: unknown }[];
  }>;
  /** Disks (and VMs) a job is moving or has queued. */
  movingDisks(): ReadonlySet<string>;
  usage(): Promise<DatastoreUsage[]>;
}

/**
 * Maintenance mode (issue 10; vSphere's datastore maintenance mode): a datastore entering it
 * takes no new disks and no moves, and everything on it (disks, and VM homes) is moved to the rest
 * of its cluster, as jobs within the scheduler's limits. It is `entering` until nothing is left,
 * then `on`; `exit` ends it at once (moves already queued off it go on).
 *
 * Moves that could not start are tried again by `advance` (the service's tick), at most once a
 * minute, since each try is a job in the history. The datastore turns `on` the moment the job
 * that moved the last thing off it ends (`watch`), or at the next tick.
 */
export class MaintenanceMode {
  /** When each datastore entering maintenance last had its moves started. */
  private readonly evacuatedAtMs = new Map<string, number>();

  constructor(
    private readonly agent: Pick<DrsAgent, 'listDatastores' | 'listDisks' | 'listVms'>,
    private readonly store: ClusterStore,
    private readonly planner: MaintenancePlanner,
    private readonly log?: Logger,
  ) {}

  /**
   * Enters maintenance: `entering`, and queues a move for every disk and VM home on it (to the
   * rest of its cluster); `on` at once when nothing is there. Again on a datastore already in
   * maintenance: queues what is left.
   */
  async enter(
    datastore: string,
  ): Promise<{ state: MaintenanceState; jobs: JobRecord[]; problems: string[] }> {
    const info = (await this.agent.listDatastores()).find((one) => one.name === datastore);
    if (info === undefined) {
      throw new ClusterError(
        ClusterErrorCode.NotFound,
        `no datastore named ${datastore}; see them with \`ferry datastore list\``,
      );
    }
    const cluster = this.store.clusterOf(datastore);
    const disks = (await this.agent.listDisks()).filter(
      (disk) => disk.datastore === datastore && disk.host === null,
    );
    if (cluster === null && disks.length > 0) {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        `datastore ${datastore} is in no cluster, so there is nowhere to move its ${disks.length} ` +
          'disk(s); put it in one with `ferry cluster create NAME --datastore ' +
          `${datastore} --datastore OTHER\` or move them with \`ferry migrate\``,
      );
    }
    // `entering` until evacuate() finds nothing left (now, or later).
    if (this.store.maintenanceOf(datastore) === 'off') {
      this.store.setMaintenance(datastore, 'entering');
    }
    const { jobs, problems } = await this.evacuate(datastore);
    return { state: this.store.maintenanceOf(datastore), jobs, problems };
  }

  /** Leaves maintenance at once; moves already queued off it go on. */
  exit(datastore: string): MaintenanceState {
    if (this.store.maintenanceOf(datastore) === 'off') {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        `datastore ${datastore} is not in maintenance; enter it with \`ferry datastore maintenance ${datastore}\``,
      );
    }
    this.store.setMaintenance(datastore, 'off');
    return 'off';
  }

  /**
   * Refuses `datastore` as a destination while it is in maintenance (new disks, incoming moves),
   * with a message that says how to get out of it.
   */
  refuse(datastore: string): void {
    const state = this.store.maintenanceOf(datastore);
    if (state === 'off') return;
    throw new ClusterError(
      ClusterErrorCode.Maintenance,
      `datastore ${datastore} is in maintenance (${state}): it takes no new disks and no moves; ` +
        `choose another datastore, or end maintenance with \`ferry datastore maintenance ${datastore} --exit\``,
    );
  }

  /** One step for every datastore entering maintenance: `on` if empty, else moves tried again. */
  async advance(nowMs: number): Promise<void> {
    for (const [datastore, state] of this.store.inMaintenance()) {
      if (state !== 'entering') continue;
      const last = this.evacuatedAtMs.get(datastore) ?? Number.NEGATIVE_INFINITY;
      await this.evacuate(datastore, nowMs, nowMs - last >= EVACUATE_RETRY_MS);
    }
  }

  /** Turns a datastore `on` when a job off it ends and nothing is left; returns the unsubscribe. */
  watch(jobs: JobManager | undefined): () => void {
    const unsubscribe = jobs?.subscribe((event) => {
      const { state, from } = event.job;
      if (event.type !== 'state' || !isTerminal(state)) return;
      if (this.store.maintenanceOf(from) !== 'entering') return;
      // Only looks: starting moves again is `advance`'s, at its retry pace.
      this.evacuate(from, Date.now(), false).catch((error: unknown) => {
        this.log?.warn({ err: error, datastore: from }, 'maintenance check failed');
      });
    });
    return unsubscribe ?? (() => {});
  }

  /**
   * Moves whatever is still on `datastore` off it (disks, and VMs whose home is there); marks it
   * `on` when nothing is left. `mayStart` false: only that check.
   */
  private async evacuate(
    datastore: string,
    nowMs = Date.now(),
    mayStart = true,
  ): Promise<{ jobs: JobRecord[]; problems: string[] }> {
    const disks = (await this.agent.listDisks()).filter(
      (disk) => disk.datastore === datastore && disk.host === null,
    );
    const homes = (await this.agent.listVms()).filter((vm) => vm.datastore === datastore);
    if (disks.length === 0 && homes.length === 0) {
      if (this.store.maintenanceOf(datastore) === 'entering') {
        this.store.setMaintenance(datastore, 'on');
      }
      return { jobs: [], problems: [] };
    }
    const cluster = this.store.clusterOf(datastore);
    if (cluster === null || !mayStart) return { jobs: [], problems: [] };
    this.evacuatedAtMs.set(datastore, nowMs);
    const { recommendations, problems } = await this.planner.recommendations(cluster);
    const moves = recommendations.filter(
      (one) => one.reason === 'maintenance' && one.from === datastore,
    );
    const { started: jobs, failures } = await this.planner.startMoves(moves);
    for (const failure of failures) {
      problems.push(
        `could not start moving ${failure.what}: ${errorMessageOf(failure.error)}; ` +
          'it is tried again within a minute while the datastore is entering maintenance',
      );
    }
    // A VM whose home is here but whose disks are not: its home follows its disks.
    const busy = this.planner.movingDisks();
    for (const vm of homes) {
      if (busy.has(vm.name) || moves.some((move) => move.vm === vm.name)) continue;
      const to = await this.homeFor(cluster, datastore, vm);
      if (to === undefined) {
        problems.push(
          `VM ${vm.name} has its home on ${datastore} and no other member of cluster ${cluster} ` +
            'can take it; add a datastore to the cluster or move the VM with `ferry vm migrate`',
        );
        continue;
      }
      const home = await this.planner.startMoves([{ vm: vm.name, disk: vm.name, to }]);
      jobs.push(...home.started);
      for (const failure of home.failures) {
        problems.push(`could not start moving ${failure.what}: ${errorMessageOf(failure.error)}`);
      }
    }
    return { jobs, problems };
  }

  /** Where a VM's home goes when its datastore enters maintenance: its disks' datastore, or the best member. */
  private async homeFor(cluster: string, from: string, vm: VmInfo): Promise<string | undefined> {
    const record = this.store.get(cluster);
    const usage = (await this.planner.usage()).filter(
      (one) => record.datastores.includes(one.name) && one.name !== from,
    );
    const disks = (await this.agent.listDisks()).filter((disk) => vm.disks.includes(disk.name));
    const together = usage.find(
      (one) =>
        one.maintenance === 'off' &&
        one.isAvailable &&
        disks.length > 0 &&
        disks.every((disk) => disk.datastore === one.name),
    );
    return together?.name ?? placeDisk(usage, vm.sizeBytes, record.spaceThreshold)?.name;
  }
}
