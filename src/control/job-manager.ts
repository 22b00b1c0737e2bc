import { randomBytes } from 'node:crypto';
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
import { PeerError } from '../host/peer-client.js';
import {
  METHOD_DEFAULT,
  type MethodName,
  type MethodTuning,
  type MirrorMode,
} from '../migrate/method.js';
import type { MigrationEvent } from '../migrate/migration.js';
import { assert } from '../util/assert.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { type Logger, silentLogger } from '../util/logger.js';
import type { Database } from './database.js';
import type { JobEvent, JobRecord, JobStatus } from './job-record.js';
import { isTerminal, JobError, JobErrorCode } from './job-states.js';
import { JobStore } from './job-store.js';
import { MigrationJob, type MigrationJobInit } from './migration-job.js';
import {
  admissionOf,
  type Demand,
  LIMITS_DEFAULT,
  type Limits,
  plan,
  usageOf,
} from './scheduler.js';

/**
 * A move the agent found interrupted in its journal at open, with what its persisted copy bitmap
 * says is already on the destination (host/resumable-moves.ts).
 */
export interface ResumableMove {
  readonly id: string;
  readonly disk: string;
  readonly vm: string | null;
  readonly disks: readonly string[];
  readonly from: string;
  /** A datastore: here, or on `toHost` for a move to another host. */
  readonly to: string;
  readonly toHost?: string | null;
  readonly method: MethodName;
  readonly sizeBytes: number;
  readonly copiedBytes: number;
}

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
  /** `ERR_NOT_FOUND` for an unknown datastore: checked when a job is submitted. */
  getDatastore?(name: string): Promise<unknown>;
  /** Disks other hosts are moving here: each counts toward this host's and its datastore's limit. */
  readonly receiver?: {
    list(): readonly {
      readonly id: string;
      /** The move it belongs to: the disks of one VM arrive as one move. */
      readonly move: string;
      readonly datastore: string;
      readonly committed: boolean;
    }[];
  };
  /** Moves interrupted by a stop, found at open and not yet resumed (issue 10). */
  resumableMoves?(): readonly ResumableMove[];
  /** Continues an interrupted move; its `id` is the journal's. */
  resumeMove?(id: string, onEvent: (event: MigrationEvent) => void): Promise<DiskMove | VmMove>;
  /** Rolls an interrupted move back: the source stays, the partial copy is deleted. */
  abandonMove?(id: string): Promise<void>;
}

export interface JobManagerOptions {
  /** How often a running job reports its progress to listeners; default 250 ms. */
  readonly progressIntervalMs?: number;
  /** How many finished jobs `list` and `get` still know (the newest ones); default 100. */
  readonly finishedMax?: number;
  /** Where jobs and their histories persist (job-store.ts); without it they live in memory. */
  readonly db?: Database;
  /** Concurrent migrations (scheduler.ts); default 2 per host, 8 per datastore. */
  readonly limits?: Limits;
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

/** `GET /v1/limits`: the limits and what holds them now. */
export interface LimitsStatus extends Limits {
  readonly running: {
    /** Migrations holding this host's slots (jobs here and receives from other hosts). */
    readonly host: number;
    /** Per datastore, those holding its slots (only datastores with one). */
    readonly datastores: Readonly<Record<string, number>>;
  };
  readonly queued: number;
}

const PROGRESS_INTERVAL_MS_DEFAULT = 250;
const FINISHED_MAX_DEFAULT = 100;
/**
 * While jobs wait, how often the scheduler looks again: receives from other hosts end without
 * telling the job manager.
 */
const RESCHEDULE_MS = 1000;
/** How long a move a busy peer turned away waits before it asks that peer again. */
const PEER_BUSY_RETRY_MS = 2000;

/** A job waiting for its turn. */
interface QueuedEntry {
  readonly request: MigrationRequest;
  readonly demand: Demand;
  /** Its place in the FIFO, kept when a busy peer sends it back. */
  readonly order: number;
  /** The peer turned it away: not asked again before `until`; `reason` is what it waits for. */
  readonly peerBusy?: { readonly until: number; readonly reason: string };
}

/**
 * The jobs of this control plane: queues each move, starts it on the agent when the scheduler's
 * limits allow (scheduler.ts), follows each as a `MigrationJob`, fans every job's events out to
 * listeners (the API's event streams) and, given a database, writes them to it (job-store.ts) so
 * a restart keeps the history, runs what was queued and resumes what was running.
 * In memory: every unfinished job, and the newest `finishedMax` finished ones.
 */
export class JobManager {
  private readonly agent: JobAgent;
  private readonly progressIntervalMs: number;
  private readonly finishedMax: number;
  private readonly log: Logger;
  private readonly store: JobStore | null;
  private limitsNow: Limits;
  private readonly jobs = new Map<string, MigrationJob>();
  /** Ids of finished jobs, oldest first, for eviction. */
  private readonly finishedIds: string[] = [];
  private readonly listeners = new Map<JobListener, string | null>();
  /** Jobs not yet started, oldest first, with their requests. */
  private readonly queued = new Map<string, QueuedEntry>();
  private nextOrder = 0;
  /** Receives admitted from other hosts whose receive is not yet listed by the agent. */
  private readonly admitted = new Map<string, Demand>();
  /** What each started, unfinished job holds (starting ones included). */
  private readonly active = new Map<string, Demand>();
  /** Jobs that were running when the process stopped, until `recover` resolves them. */
  private readonly interrupted: string[] = [];
  /** One promise per running job, settled when it finished (either way). */
  private readonly running = new Set<Promise<void>>();
  private rescheduleTimer: NodeJS.Timeout | null = null;
  private isRecovered = false;
  private isClosed = false;

  constructor(agent: JobAgent, options: JobManagerOptions = {}) {
    this.agent = agent;
    this.progressIntervalMs = options.progressIntervalMs ?? PROGRESS_INTERVAL_MS_DEFAULT;
    this.finishedMax = options.finishedMax ?? FINISHED_MAX_DEFAULT;
    this.log = options.log ?? silentLogger;
    this.limitsNow = options.limits ?? LIMITS_DEFAULT;
    this.store = options.db === undefined ? null : new JobStore(options.db);
    if (this.store !== null) this.restore(this.store);
    // Nothing to resolve before new jobs may start: no history left unfinished, and no move the
    // agent offers to resume (it opened before us). Else `recover` must run first.
    this.isRecovered =
      this.interrupted.length === 0 &&
      this.queued.size === 0 &&
      (agent.resumableMoves?.() ?? []).length === 0;
  }

  /**
   * Resolves what the last process left (call once, after the agent opened): resumes the moves
   * the agent offers as resumable (as their jobs, or as new jobs when the database did not know
   * them), ends the other interrupted jobs by where their disks are now, and lets the queued
   * jobs start. Until then nothing starts.
   */
  async recover(): Promise<void> {
    const offered = new Map((this.agent.resumableMoves?.() ?? []).map((move) => [move.id, move]));
    for (const id of this.interrupted.splice(0)) {
      const job = this.jobNamed(id);
      const move = job.move === null ? undefined : offered.get(job.move);
      if (move !== undefined && this.agent.resumeMove !== undefined) {
        offered.delete(move.id);
        await this.resumeInto(job, move);
        continue;
      }
      job.interrupted(await this.whereNow(job));
      this.retire(job);
    }
    for (const move of offered.values()) {
      if (this.agent.resumeMove === undefined) break;
      const host = move.toHost ?? undefined;
      const target = { datastore: move.to, ...(host === undefined ? {} : { host }) };
      const request: MigrationRequest =
        move.vm === null ? { disk: move.disk, ...target } : { vm: move.vm, ...target };
      const job = this.createJob(
        {
          ...move,
          to: destinationOf(request),
          createdAt: new Date(),
          speedBytesPerSecond: 0,
          requestedMethod: move.method,
        },
        request,
      );
      await this.resumeInto(job, move);
    }
    this.isRecovered = true;
    this.schedule();
  }

  /**
   * Queues a move and returns its record at once (queued, or running when the limits let it
   * start now). Rejects, and then no job exists, when the request can be refused without
   * starting: unknown disk, VM or datastore, the same datastore, a disk another job moves. What
   * the agent refuses when the job's turn comes (no space, say) fails the job.
   */
  async startMigration(request: MigrationRequest): Promise<JobRecord> {
    if (this.isClosed) throw new HostError(HostErrorCode.Closed, 'the server is shutting down');
    const subject = await this.subjectOf(request);
    await this.checkRequest(request, subject);
    if (this.isClosed) throw new HostError(HostErrorCode.Closed, 'the server is shutting down');
    const job = this.createJob(
      {
        ...subject,
        to: destinationOf(request),
        speedBytesPerSecond: request.speedBytesPerSecond ?? 0,
        createdAt: new Date(),
        requestedMethod: request.method ?? METHOD_DEFAULT,
      },
      request,
    );
    this.queued.set(job.id, {
      request,
      demand: demandOf(job.id, subject.from, request),
      order: this.nextOrder++,
    });
    // A job that starts at once answers as before the queue existed: running, or the agent's
    // refusal thrown (and no job kept).
    const refusal = await this.schedule().get(job.id);
    if (refusal !== undefined) {
      this.forget(job.id);
      throw refusal;
    }
    return job.record();
  }

  /** The limits, and the migrations holding them now. */
  limits(): LimitsStatus {
    const usage = usageOf(this.holders());
    return {
      ...this.limitsNow,
      running: { host: usage.host, datastores: Object.fromEntries(usage.datastores) },
      queued: this.queued.size,
    };
  }

  /** Changes the limits; queued jobs that now fit start. */
  setLimits(limits: Limits): LimitsStatus {
    this.limitsNow = limits;
    this.schedule();
    return this.limits();
  }

  /** Every job kept, oldest first, without their event histories. */
  list(): JobStatus[] {
    return [...this.jobs.values()].map((job) => job.status());
  }

  /** `ERR_JOB_NOT_FOUND` for an unknown (or forgotten) id; a move id finds its job too. */
  get(id: string): JobRecord {
    return this.jobNamed(id).record();
  }

  /**
   * Cancels a queued job at once; asks a running job to stop, and it is `cancelling` until its
   * rollback is done, then `cancelled`. `ERR_JOB_STATE` (409) in any other state.
   */
  cancel(id: string): JobRecord {
    const job = this.jobNamed(id);
    job.cancel('asked by the user');
    if (this.queued.delete(job.id)) {
      this.retire(job);
      this.schedule();
    }
    return job.record();
  }

  /**
   * Changes a job's copy rate (bytes per second, 0 unlimited); a queued job starts with it.
   * `ERR_JOB_STATE` in a state that allows no speed.
   */
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
   * Refuses new jobs, starts no queued one (they stay queued in the database and run after the
   * next start), cancels every running job that can be cancelled (each rolls back: the guest
   * stays on its source) and waits for every job to finish, including one in its switchover.
   */
  async shutdown(): Promise<void> {
    this.isClosed = true;
    if (this.rescheduleTimer !== null) clearTimeout(this.rescheduleTimer);
    this.rescheduleTimer = null;
    for (const job of this.jobs.values()) {
      if (job.state !== 'running' || !this.active.has(job.id)) continue;
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

  /** Reads the history back; unfinished jobs wait for `recover`. */
  private restore(store: JobStore): void {
    for (const { record, request } of store.load(this.finishedMax)) {
      const job = MigrationJob.restore(record, {
        progressIntervalMs: this.progressIntervalMs,
        emit: (event) => this.publish(event),
      });
      this.jobs.set(job.id, job);
      if (isTerminal(job.state)) {
        this.finishedIds.push(job.id);
      } else if (job.state === 'queued') {
        const queuedRequest = request as MigrationRequest;
        this.queued.set(job.id, {
          request: queuedRequest,
          demand: demandOf(job.id, record.from, queuedRequest),
          order: this.nextOrder++,
        });
      } else {
        this.interrupted.push(job.id);
      }
    }
  }

  private createJob(
    init: Omit<MigrationJobInit, 'id' | 'progressIntervalMs' | 'emit'>,
    request: MigrationRequest,
  ): MigrationJob {
    const job = new MigrationJob({
      ...init,
      id: this.newId(),
      progressIntervalMs: this.progressIntervalMs,
      emit: (event) => this.publish(event),
    });
    this.store?.add(job.status(), request);
    this.jobs.set(job.id, job);
    job.announce();
    return job;
  }

  /** 8 hex digits, unique among the jobs kept. */
  private newId(): string {
    for (;;) {
      const id = randomBytes(4).toString('hex');
      if (!this.jobs.has(id)) return id;
    }
  }

  /**
   * Another host asks to move a disk or a VM here: admitted when this host's limits have room
   * for it now (it takes a slot as a job here would), else `ERR_HOST_BUSY`, and that host keeps
   * the move queued and asks again. The slot is held until the returned function is called,
   * which the caller does once the agent lists the receive (or it failed).
   */
  admitReceive(id: string, datastores: readonly string[]): () => void {
    const demand: Demand = { id: `admit ${id}`, datastores: unique(datastores) };
    const held = admissionOf(demand, usageOf(this.holders()), this.limitsNow);
    if (held !== null) {
      throw new JobError(
        JobErrorCode.HostBusy,
        `busy: ${held}; the move stays queued on its source host and is asked for again`,
      );
    }
    this.admitted.set(demand.id, demand);
    return () => {
      if (this.admitted.delete(demand.id)) this.schedule();
    };
  }

  /** Starts what the limits allow, in FIFO order; tells the others where they stand. */
  private schedule(): Map<string, Promise<unknown>> {
    const launched = new Map<string, Promise<unknown>>();
    if (this.isClosed || !this.isRecovered) return launched;
    const now = Date.now();
    const queued = [...this.queued.values()]
      .sort((a, b) => a.order - b.order)
      .map((entry) =>
        entry.peerBusy !== undefined && entry.peerBusy.until > now
          ? { ...entry.demand, heldBy: entry.peerBusy.reason }
          : entry.demand,
      );
    const decided = plan(queued, usageOf(this.holders()), this.limitsNow);
    for (const id of decided.start) launched.set(id, this.launch(id));
    for (const [id, place] of decided.waiting) this.jobs.get(id)?.setQueue(place);
    if (this.rescheduleTimer !== null) clearTimeout(this.rescheduleTimer);
    this.rescheduleTimer = null;
    const isPeerHeld = [...this.queued.values()].some((entry) => entry.peerBusy !== undefined);
    if (this.queued.size > 0 && (this.agent.receiver !== undefined || isPeerHeld)) {
      this.rescheduleTimer = setTimeout(() => this.schedule(), RESCHEDULE_MS);
      this.rescheduleTimer.unref();
    }
    return launched;
  }

  /**
   * What holds slots now: the jobs started here, and the moves from other hosts (admitted, or
   * receiving until their commit). The disks of one VM arriving are one move, as its job there.
   */
  private holders(): Demand[] {
    const receives = new Map<string, Set<string>>();
    for (const receive of this.agent.receiver?.list() ?? []) {
      if (receive.committed) continue;
      const datastores = receives.get(receive.move) ?? new Set<string>();
      datastores.add(receive.datastore);
      receives.set(receive.move, datastores);
    }
    const arriving = [...receives].map(([move, datastores]) => ({
      id: `receive ${move}`,
      datastores: [...datastores],
    }));
    return [...this.active.values(), ...this.admitted.values(), ...arriving];
  }

  /**
   * Starts queued job `id` on the agent and follows it to its end. Resolves once it started
   * (with undefined) or the agent refused it (with the error; the job has failed).
   */
  private launch(id: string): Promise<unknown> {
    const entry = this.queued.get(id);
    const job = this.jobs.get(id);
    assert(entry !== undefined && job !== undefined, `job ${id} is queued`);
    this.queued.delete(id);
    this.active.set(id, entry.demand);
    // Events may come before the move resolves (the copy starts inside it): held until the job
    // has started, then replayed in order.
    let isStarted = false;
    const early: MigrationEvent[] = [];
    const onEvent = (event: MigrationEvent): void => {
      if (isStarted) job.apply(event);
      else early.push(event);
    };
    const request = { ...entry.request, speedBytesPerSecond: job.speed };
    const begin = (): Promise<Move<MoveOutcome>> =>
      request.vm === undefined
        ? this.beginDiskMove(request.disk, request, onEvent)
        : this.beginVmMove(request.vm, request, onEvent);
    let refusal: unknown;
    const begun = begin().then(
      (move) => {
        if (job.isFinished) {
          // Cancelled while the agent was starting it: roll back what it started.
          move.migration.cancel();
          this.track(
            move.done.then(
              () => this.log.warn({ job: id }, 'a cancelled job committed before its cancel'),
              () => {},
            ),
            () => this.settle(job),
          );
          return;
        }
        if (request.speedBytesPerSecond !== job.speed) move.migration.setSpeed(job.speed);
        job.start(move.id, move.migration);
        for (const event of early) job.apply(event);
        isStarted = true;
        this.follow(job, move);
      },
      (error: unknown) => {
        if (!job.isFinished && isPeerBusy(error)) {
          // The peer's limits are full: back to its place in the queue, to ask again later.
          this.active.delete(id);
          const reason = errorMessageOf(error);
          this.queued.set(id, {
            ...entry,
            peerBusy: { until: Date.now() + PEER_BUSY_RETRY_MS, reason },
          });
          this.log.info({ job: id, reason }, 'the destination host is busy; the job waits');
          this.schedule();
          return;
        }
        refusal = error;
        if (!job.isFinished) job.fail(error);
        this.settle(job);
      },
    );
    this.track(begun, () => {});
    return begun.then(() => refusal);
  }

  /** Resumes interrupted move `move` as job `job` (restored running, or new and queued). */
  private async resumeInto(job: MigrationJob, move: ResumableMove): Promise<void> {
    const resumeMove = this.agent.resumeMove;
    assert(resumeMove !== undefined, 'resumes only with an agent that resumes');
    const early: MigrationEvent[] = [];
    let isStarted = false;
    const onEvent = (event: MigrationEvent): void => {
      if (isStarted) job.apply(event);
      else early.push(event);
    };
    // As a fresh job holds them: its destination datastore only when it is on this host.
    const datastores = move.toHost == null ? [move.from, move.to] : [move.from];
    this.active.set(job.id, { id: job.id, datastores: unique(datastores) });
    let resumed: Move<MoveOutcome>;
    try {
      resumed = await resumeMove.call(this.agent, move.id, onEvent);
    } catch (error) {
      this.log.warn({ err: error, job: job.id, move: move.id }, 'the agent could not resume');
      // Rolled back, so that the disk is not left busy with a move nobody will resume: its job
      // ends here, and the source has every write.
      await this.agent.abandonMove?.(move.id).catch((abandoning: unknown) => {
        this.log.warn({ err: abandoning, move: move.id }, 'the unresumable move stays offered');
      });
      if (job.state === 'queued') job.fail(error);
      else job.interrupted(await this.whereNow(job));
      this.settle(job);
      return;
    }
    job.resume(move.id, resumed.migration, move.copiedBytes);
    for (const event of early) job.apply(event);
    isStarted = true;
    this.follow(job, resumed);
  }

  /** Follows a started move to its end; the job settles in the same turn as its last state. */
  private follow(job: MigrationJob, move: Move<MoveOutcome>): void {
    this.track(
      move.done.then(
        (result) => {
          job.succeed(result);
          this.settle(job);
        },
        (error: unknown) => {
          job.fail(error);
          this.settle(job);
        },
      ),
      () => {},
    );
  }

  /** Keeps `work` among the running until it settles, then calls `then` (shutdown waits on it). */
  private track(work: Promise<void>, then: () => void): void {
    const tracked = work.then(then).finally(() => {
      this.running.delete(tracked);
    });
    this.running.add(tracked);
  }

  /** A job ended: frees its slots, keeps it among the finished, lets the queue move. */
  private settle(job: MigrationJob): void {
    this.active.delete(job.id);
    this.retire(job);
    const { state, disk, error } = job.status();
    const fields = { job: job.id, disk, state, error };
    if (state === 'failed') this.log.warn(fields, 'job failed');
    else this.log.info(fields, `job ${state}`);
    this.schedule();
  }

  /** Where an interrupted job's subject is now, by the agent's authority (its datastores). */
  private async whereNow(job: MigrationJob): Promise<string> {
    const { disk, vm, from, to } = job.status();
    try {
      const found = vm === null ? await this.agent.getDisk(disk) : await this.agent.getVm(vm);
      return found.datastore;
    } catch (error) {
      // Gone from this host: a move to another host committed there.
      if (errorCodeOf(error) === HostErrorCode.NotFound && to.includes(':')) return to;
      return from;
    }
  }

  /** The disk or VM a request moves, as the job will name it; the agent's 404 when unknown. */
  private async subjectOf(
    request: MigrationRequest,
  ): Promise<Pick<MigrationJobInit, 'disk' | 'vm' | 'disks' | 'from' | 'sizeBytes'>> {
    if (request.vm === undefined) {
      const disk = await this.agent.getDisk(request.disk);
      const subject = { disk: request.disk, vm: null, disks: [request.disk] };
      return { ...subject, from: disk.datastore, sizeBytes: disk.sizeBytes };
    }
    const vm = await this.agent.getVm(request.vm);
    const subject = { disk: request.vm, vm: request.vm, disks: vm.disks };
    return { ...subject, from: vm.datastore, sizeBytes: vm.sizeBytes };
  }

  /** What can be refused before the job's turn: as the agent would refuse it then. */
  private async checkRequest(
    request: MigrationRequest,
    subject: Pick<MigrationJobInit, 'disk' | 'vm' | 'disks' | 'from'>,
  ): Promise<void> {
    const what = subject.vm === null ? `disk ${subject.disk}` : `VM ${subject.vm}`;
    if (request.host === undefined && request.datastore !== undefined) {
      await this.agent.getDatastore?.(request.datastore);
      if (request.datastore === subject.from) {
        throw new HostError(
          HostErrorCode.SameDatastore,
          `${what} is already in datastore ${request.datastore}`,
        );
      }
    }
    for (const job of this.jobs.values()) {
      if (job.isFinished) continue;
      const { disks, id } = job.status();
      if (disks.some((name) => subject.disks.includes(name))) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `${what} is being moved by job ${id}; wait for it to end or cancel it`,
        );
      }
    }
  }

  private async beginDiskMove(
    name: string,
    request: MigrationOptions,
    onEvent: (event: MigrationEvent) => void,
  ): Promise<DiskMove> {
    return request.host === undefined
      ? await this.agent.moveDisk(toMoveRequest(name, request), onEvent)
      : await this.moveToHost(name, request.host, request, onEvent);
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
  ): Promise<VmMove> {
    return request.host === undefined
      ? await this.agent.moveVm(toMoveRequest(name, request), onEvent)
      : await this.moveVmToHost(name, request.host, request, onEvent);
  }

  /** Drops a job that the agent refused as it was submitted: the caller gets the error instead. */
  private forget(id: string): void {
    this.jobs.delete(id);
    const at = this.finishedIds.indexOf(id);
    if (at >= 0) this.finishedIds.splice(at, 1);
    this.store?.remove(id);
  }

  /** Keeps the newest `finishedMax` finished jobs in memory (the database may keep more). */
  private retire(job: MigrationJob): void {
    this.finishedIds.push(job.id);
    while (this.finishedIds.length > this.finishedMax) {
      const oldest = this.finishedIds.shift();
      if (oldest !== undefined) this.jobs.delete(oldest);
    }
  }

  private jobNamed(id: string): MigrationJob {
    const job = this.jobs.get(id) ?? [...this.jobs.values()].find((each) => each.move === id);
    if (!job) throw new JobError(JobErrorCode.NotFound, `no job ${id}`);
    return job;
  }

  /**
   * Writes an event to the database and fans it out; neither a store's nor a listener's failure
   * may reach the migration that emitted it.
   */
  private publish(event: JobEvent): void {
    try {
      this.store?.record(event);
    } catch (error) {
      this.log.error({ err: error, job: event.job.id }, 'could not write a job event to ferry.db');
    }
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

/** The slots a job holds: this host's, and its local datastores' (source, and destination here). */
function demandOf(id: string, from: string, request: MigrationOptions): Demand {
  const to = request.host === undefined ? request.datastore : undefined;
  return { id, datastores: unique(to === undefined ? [from] : [from, to]) };
}

/** The destination host turned the move away for its limits (`admitReceive` there). */
function isPeerBusy(error: unknown): boolean {
  return error instanceof PeerError && error.remoteCode === JobErrorCode.HostBusy;
}

function unique(names: readonly string[]): string[] {
  return [...new Set(names)];
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
