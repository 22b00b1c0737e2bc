import type {
  DiskInfo,
  DiskMove,
  Move,
  MoveDiskRequest,
  MoveDiskToHostRequest,
  MoveOutcome,
  MoveVmRequest,
  MoveVmToHostRequest,
  VmInfo,
  VmMove,
} from '../host/agent.js';
import { HostError, HostErrorCode } from '../host/errors.js';
import type { MethodName, MethodTuning, MirrorMode } from '../migrate/method.js';
import type { MigrationEvent } from '../migrate/migration.js';
import { errorCodeOf } from '../util/errors.js';
import { type Logger, silentLogger } from '../util/logger.js';
import type { JobEvent, JobRecord, JobStatus } from './job-record.js';
import { JobError, JobErrorCode } from './job-states.js';
import { MigrationJob, type MigrationJobInit } from './migration-job.js';

/** What the job manager needs of the agent (src/host/agent.ts); tests pass a small fake. */
export interface JobAgent {
  moveDisk(request: MoveDiskRequest, onEvent: (event: MigrationEvent) => void): Promise<DiskMove>;
  /** Absent in agents that cannot move disks to other hosts (test doubles). */
  moveDiskToHost?(
    request: MoveDiskToHostRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove>;
  getDisk(name: string): Promise<Pick<DiskInfo, 'datastore' | 'sizeBytes'>>;
  moveVm(request: MoveVmRequest, onEvent: (event: MigrationEvent) => void): Promise<VmMove>;
  /** Absent in agents that cannot move VMs to other hosts (test doubles). */
  moveVmToHost?(
    request: MoveVmToHostRequest,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<VmMove>;
  getVm(name: string): Promise<Pick<VmInfo, 'datastore' | 'sizeBytes' | 'disks'>>;
}

export interface JobManagerOptions {
  /** How often a running job reports its progress to listeners; default 250 ms. */
  readonly progressIntervalMs?: number;
  /** How many finished jobs `list` and `get` still know (the newest ones); default 100. */
  readonly finishedMax?: number;
  readonly log?: Logger;
}

/** `ferry migrate` / `POST /v1/migrations`: moves one disk, or one VM (its home and disks). */
export type MigrationRequest =
  | (MigrationOptions & { readonly disk: string; readonly vm?: undefined })
  | (MigrationOptions & { readonly vm: string; readonly disk?: undefined });

interface MigrationOptions {
  /** The destination datastore: on this host, or with `host` on that one (default: its default). */
  readonly datastore?: string;
  /** Another host to move to. */
  readonly host?: string;
  /** A VM to another host: the network there for each of its networks here. */
  readonly networkMap?: Readonly<Record<string, string>>;
  /** A VM to another host: the datastore there for each datastore of its disks here. */
  readonly datastoreMap?: Readonly<Record<string, string>>;
  /** A running VM to another host: QEMU's downtime limit, ms. */
  readonly maxDowntimeMs?: number;
  /** How mirrored writes reach the destination; default `sync` here, `auto` across hosts. */
  readonly mirror?: MirrorMode;
  /** The async mirror's buffer, bytes; default 64 MiB. */
  readonly mirrorBufferBytes?: number;
  /** The copy yields to the guest's I/O (guest-first.ts); default true. */
  readonly isGuestFirst?: boolean;
  readonly method?: MethodName;
  /** Copy rate, bytes per second; 0 or absent: unlimited. */
  readonly speedBytesPerSecond?: number;
  readonly provisioning?: 'thin' | 'thick';
}

export type JobListener = (event: JobEvent) => void;

const PROGRESS_INTERVAL_MS_DEFAULT = 250;
const FINISHED_MAX_DEFAULT = 100;

/**
 * The jobs of this control plane: starts disk moves on the agent, follows each as a
 * `MigrationJob`, and fans every job's events out to listeners (the API's event streams).
 * Jobs live in memory: running ones until they finish, finished ones until `finishedMax` newer
 * ones have finished. TODO(#3): persist them in the inventory once the SQLite store exists.
 */
export class JobManager {
  private readonly agent: JobAgent;
  private readonly progressIntervalMs: number;
  private readonly finishedMax: number;
  private readonly log: Logger;
  private readonly jobs = new Map<string, MigrationJob>();
  /** Ids of finished jobs, oldest first, for eviction. */
  private readonly finishedIds: string[] = [];
  private readonly listeners = new Map<JobListener, string | null>();
  /** One promise per running job, settled when it finished (either way). */
  private readonly running = new Set<Promise<void>>();
  private isClosed = false;

  constructor(agent: JobAgent, options: JobManagerOptions = {}) {
    this.agent = agent;
    this.progressIntervalMs = options.progressIntervalMs ?? PROGRESS_INTERVAL_MS_DEFAULT;
    this.finishedMax = options.finishedMax ?? FINISHED_MAX_DEFAULT;
    this.log = options.log ?? silentLogger;
  }

  /**
   * Starts moving a disk. Resolves once the agent has created the destination and the copy
   * runs, with the job's record; rejects with the agent's error when it refuses (unknown disk
   * or datastore, same datastore, disk busy, no space) and then no job exists.
   */
  async startMigration(request: MigrationRequest): Promise<JobRecord> {
    if (this.isClosed) throw new HostError(HostErrorCode.Closed, 'the server is shutting down');
    const createdAt = new Date();
    // Events may come before the move resolves (the copy starts inside it): held until the job
    // exists, then replayed in order.
    let job: MigrationJob | undefined;
    const early: MigrationEvent[] = [];
    const onEvent = (event: MigrationEvent): void => {
      if (job === undefined) early.push(event);
      else job.apply(event);
    };
    const begun =
      request.vm === undefined
        ? await this.beginDiskMove(request.disk, request, onEvent)
        : await this.beginVmMove(request.vm, request, onEvent);
    const created = new MigrationJob({
      ...begun.subject,
      id: begun.move.id,
      to: destinationOf(request),
      speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
      createdAt,
      migration: begun.move.migration,
      progressIntervalMs: this.progressIntervalMs,
      emit: (event) => this.publish(event),
    });
    this.jobs.set(created.id, created);
    created.announce();
    for (const event of early) created.apply(event);
    job = created;
    this.follow(created, begun.move);
    return created.record();
  }

  private async beginDiskMove(
    name: string,
    request: MigrationOptions,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<Begun> {
    const disk = await this.agent.getDisk(name);
    const move: DiskMove =
      request.host === undefined
        ? await this.agent.moveDisk(toMoveRequest(name, request), onEvent)
        : await this.moveToHost(name, request.host, request, onEvent);
    const subject = { disk: name, vm: null, disks: [name], from: disk.datastore };
    return { move, subject: { ...subject, sizeBytes: disk.sizeBytes } };
  }

  private moveToHost(
    name: string,
    host: string,
    request: MigrationOptions,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    if (this.agent.moveDiskToHost === undefined) {
      throw new HostError(HostErrorCode.NotFound, 'this agent cannot move disks to other hosts');
    }
    const { datastore, ...rest } = toMoveRequest(name, request);
    return this.agent.moveDiskToHost(
      { ...rest, host, ...(datastore === '' ? {} : { datastore }) },
      onEvent,
    );
  }

  private moveVmToHost(
    name: string,
    host: string,
    request: MigrationOptions,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<VmMove> {
    if (this.agent.moveVmToHost === undefined) {
      throw new HostError(HostErrorCode.NotFound, 'this agent cannot move VMs to other hosts');
    }
    const { datastore, ...rest } = toMoveRequest(name, request);
    return this.agent.moveVmToHost(
      {
        ...rest,
        host,
        ...(datastore === '' ? {} : { datastore }),
        ...(request.networkMap === undefined ? {} : { networkMap: request.networkMap }),
        ...(request.datastoreMap === undefined ? {} : { datastoreMap: request.datastoreMap }),
        ...(request.maxDowntimeMs === undefined ? {} : { maxDowntimeMs: request.maxDowntimeMs }),
      },
      onEvent,
    );
  }

  private async beginVmMove(
    name: string,
    request: MigrationOptions,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<Begun> {
    const vm = await this.agent.getVm(name);
    const move: VmMove =
      request.host === undefined
        ? await this.agent.moveVm(toMoveRequest(name, request), onEvent)
        : await this.moveVmToHost(name, request.host, request, onEvent);
    const subject = { disk: name, vm: name, disks: vm.disks, from: vm.datastore };
    return { move, subject: { ...subject, sizeBytes: vm.sizeBytes } };
  }

  /** Every job kept, oldest first, without their event histories. */
  list(): JobStatus[] {
    return [...this.jobs.values()].map((job) => job.status());
  }

  /** `ERR_JOB_NOT_FOUND` for an unknown (or forgotten) id. */
  get(id: string): JobRecord {
    return this.jobNamed(id).record();
  }

  /**
   * Asks a running job to stop; the job is `cancelling` until its rollback is done, then
   * `cancelled`. `ERR_JOB_STATE` (409) in any other state.
   */
  cancel(id: string): JobRecord {
    const job = this.jobNamed(id);
    job.cancel('asked by the user');
    return job.record();
  }

  /** Changes a running job's copy rate (bytes per second, 0 unlimited); else `ERR_JOB_STATE`. */
  setSpeed(id: string, bytesPerSecond: number): JobRecord {
    const job = this.jobNamed(id);
    job.setSpeed(bytesPerSecond);
    return job.record();
  }

  /**
   * Calls `listener` with every event of job `jobId`, or of every job when null, until the
   * returned function is called. A listener that throws is logged and removed.
   */
  subscribe(listener: JobListener, jobId: string | null = null): () => void {
    this.listeners.set(listener, jobId);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Listeners subscribed now (each open event stream is one). */
  get listenerCount(): number {
    return this.listeners.size;
  }

  /**
   * Refuses new jobs, cancels every job that can be cancelled (each rolls back: the guest stays
   * on its source) and waits for every job to finish, including one in its switchover.
   */
  async shutdown(): Promise<void> {
    this.isClosed = true;
    for (const job of this.jobs.values()) {
      if (job.state !== 'running') continue;
      try {
        job.cancel('the server is shutting down');
      } catch (error) {
        // Committed an instant ago: it finishes its switchover, which the wait below covers.
        if (errorCodeOf(error) !== JobErrorCode.State) throw error;
        this.log.info({ job: job.id }, 'job is committing its switchover; waiting for it');
      }
    }
    await Promise.all(this.running);
  }

  private follow(job: MigrationJob, move: Move<MoveOutcome>): void {
    const settled = move.done.then(
      (result) => job.succeed(result),
      (error: unknown) => job.fail(error),
    );
    const tracked = settled.finally(() => {
      this.running.delete(tracked);
      this.retire(job);
      const { state, disk, error } = job.status();
      const fields = { job: job.id, disk, state, error };
      if (state === 'failed') this.log.warn(fields, 'job failed');
      else this.log.info(fields, `job ${state}`);
    });
    this.running.add(tracked);
  }

  /** Keeps the newest `finishedMax` finished jobs. */
  private retire(job: MigrationJob): void {
    this.finishedIds.push(job.id);
    while (this.finishedIds.length > this.finishedMax) {
      const oldest = this.finishedIds.shift();
      if (oldest !== undefined) this.jobs.delete(oldest);
    }
  }

  private jobNamed(id: string): MigrationJob {
    const job = this.jobs.get(id);
    if (!job) throw new JobError(JobErrorCode.NotFound, `no job ${id}`);
    return job;
  }

  /** Fans an event out; a listener's failure must not reach the migration that emitted it. */
  private publish(event: JobEvent): void {
    for (const [listener, jobId] of this.listeners) {
      if (jobId !== null && jobId !== event.job.id) continue;
      try {
        listener(event);
      } catch (error) {
        this.listeners.delete(listener);
        this.log.error({ err: error, job: event.job.id }, 'a job listener failed and was removed');
      }
    }
  }
}

/** A move started on the agent, and what the job says it moves. */
interface Begun {
  readonly move: Move<MoveOutcome>;
  readonly subject: Pick<MigrationJobInit, 'disk' | 'vm' | 'disks' | 'from' | 'sizeBytes'>;
}

/** What a job says it moves to: a datastore here, or `HOST:DATASTORE` on another host. */
function destinationOf(request: MigrationOptions): string {
  if (request.host === undefined) return request.datastore ?? '';
  return `${request.host}:${request.datastore ?? 'default'}`;
}

function toMoveRequest(name: string, request: MigrationOptions): MoveDiskRequest {
  return {
    name,
    datastore: request.datastore ?? '',
    ...(request.method === undefined ? {} : { method: request.method }),
    ...(request.speedBytesPerSecond === undefined
      ? {}
      : { speedBytesPerSecond: request.speedBytesPerSecond }),
    ...(request.provisioning === undefined ? {} : { provisioning: request.provisioning }),
    ...tuningOf(request),
  };
}

function tuningOf(request: MigrationOptions): { tuning?: Partial<MethodTuning> } {
  if (
    request.mirror === undefined &&
    request.mirrorBufferBytes === undefined &&
    request.isGuestFirst === undefined
  ) {
    return {};
  }
  return {
    tuning: {
      ...(request.isGuestFirst === undefined ? {} : { isGuestFirst: request.isGuestFirst }),
      ...(request.mirror === undefined ? {} : { mirrorMode: request.mirror }),
      ...(request.mirrorBufferBytes === undefined
        ? {}
        : { asyncBufferBytes: request.mirrorBufferBytes }),
    },
  };
}
