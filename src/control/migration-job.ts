import type { MoveOutcome } from '../host/agent.js';
import type { CopyPath } from '../migrate/copy-offload.js';
import { MigrateErrorCode } from '../migrate/errors.js';
import type { MethodName } from '../migrate/method.js';
import type { Migration, MigrationEvent } from '../migrate/migration.js';
import type { ProgressSnapshot } from '../migrate/progress.js';
import { assert } from '../util/assert.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import {
  describeMigrationEvent,
  JOB_LOG_MAX,
  type JobEvent,
  type JobEventType,
  type JobLogEntry,
  type JobQueueStatus,
  type JobRecord,
  type JobStatus,
} from './job-record.js';
import { canTransition, checkVerb, isTerminal, JOB_VERBS, type JobState } from './job-states.js';
import { formatSpeed } from './speed.js';

export interface MigrationJobInit {
  readonly id: string;
  /** The disk moved, or for a VM move the VM's name. */
  readonly disk: string;
  /** The VM moved, or null for a disk move. */
  readonly vm: string | null;
  /** Every disk the job moves. */
  readonly disks: readonly string[];
  readonly from: string;
  readonly to: string;
  readonly sizeBytes: number;
  readonly speedBytesPerSecond: number;
  readonly createdAt: Date;
  /** The method asked for (the agent's default when the request named none). */
  readonly requestedMethod: MethodName;
  /** How often a running job reports its progress. */
  readonly progressIntervalMs: number;
  /** Receives every change; must not throw (the manager guards its listeners). */
  readonly emit: (event: JobEvent) => void;
}

/** The counters a finished job keeps once it lets go of its migration. */
interface FinalCounters {
  readonly method: MethodName;
  readonly progress: ProgressSnapshot;
  readonly dirtyBytes: number;
  readonly bytesCopied: number;
  readonly passes: number;
  readonly durationMs: number;
}

/**
 * One disk move as a job: `queued` until the scheduler starts it (`start`), then follows its migration's events, moves along the state table
 * (job-states.ts), reports progress every `progressIntervalMs` while it runs, and keeps the
 * latest events. Once finished it drops the migration (and the bitmaps it holds) and keeps only
 * its final counters, so a finished job costs a few hundred bytes.
 */
export class MigrationJob {
  readonly id: string;
  private readonly disk: string;
  private readonly vm: string | null;
  private readonly disks: readonly string[];
  /** What the job's messages call what it moves: `disk d1`, or `VM web (disks d1, d2)`. */
  private readonly subject: string;
  private readonly sizeBytes: number;
  private requestedMethod: MethodName;
  private readonly createdAt: Date;
  /** The creation time while queued. */
  private startedAt: Date;
  private readonly progressIntervalMs: number;
  private readonly emitTo: (event: JobEvent) => void;
  private migration: Migration | null = null;
  private moveId: string | null = null;
  private queue: JobQueueStatus | null = null;
  private stateNow: JobState = 'queued';
  private phase: string | null = null;
  private pass = 0;
  private mode: 'sync' | 'async' | null = null;
  private copyPath: CopyPath | null = null;
  private speedBytesPerSecond: number;
  private downtimeMs: number | null = null;
  private memory: JobStatus['memory'] = null;
  private from: string;
  private to: string;
  private finishedAt: Date | null = null;
  private error: { code: string; message: string } | null = null;
  private final: FinalCounters | null = null;
  private readonly log: JobLogEntry[] = [];
  private ticker: NodeJS.Timeout | null = null;

  constructor(init: MigrationJobInit) {
    this.id = init.id;
    this.disk = init.disk;
    this.vm = init.vm;
    this.disks = init.disks;
    this.subject =
      init.vm === null ? `disk ${init.disk}` : `VM ${init.vm} (disks ${init.disks.join(', ')})`;
    this.sizeBytes = init.sizeBytes;
    this.requestedMethod = init.requestedMethod;
    this.createdAt = init.createdAt;
    this.startedAt = init.createdAt;
    this.progressIntervalMs = init.progressIntervalMs;
    this.emitTo = init.emit;
    this.from = init.from;
    this.to = init.to;
    this.speedBytesPerSecond = init.speedBytesPerSecond;
  }

  /**
   * A job as the database kept it (job-store.ts), without a migration. A finished one stays as
   * it was; one that was queued is queued again; one that was running when the process stopped
   * is `running` with its last counters until the manager resumes it (`resume`) or ends it
   * (`interrupted`). Emits nothing.
   */
  static restore(
    record: JobRecord,
    options: Pick<MigrationJobInit, 'progressIntervalMs' | 'emit'>,
  ): MigrationJob {
    const job = new MigrationJob({
      ...record,
      createdAt: new Date(record.createdAt),
      ...options,
    });
    job.startedAt = new Date(record.startedAt);
    job.moveId = record.moveId;
    job.stateNow = isTerminal(record.state) || record.state === 'queued' ? record.state : 'running';
    job.phase = record.phase;
    job.pass = record.pass;
    job.mode = record.mode;
    job.copyPath = record.copyPath;
    job.downtimeMs = record.downtimeMs;
    job.memory = record.memory;
    job.finishedAt = record.finishedAt === null ? null : new Date(record.finishedAt);
    job.error = record.error;
    job.final = {
      method: record.method,
      progress: record.progress,
      dirtyBytes: record.dirtyBytes,
      bytesCopied: record.bytesCopied,
      passes: record.passes,
      durationMs: record.durationMs,
    };
    job.log.push(...record.events.slice(-JOB_LOG_MAX));
    return job;
  }

  /** The requested copy rate (bytes per second, 0 unlimited): a queued job starts with it. */
  get speed(): number {
    return this.speedBytesPerSecond;
  }

  /** The agent's move journal id, once started. */
  get move(): string | null {
    return this.moveId;
  }

  /**
   * The scheduler started the job: the agent journaled move `moveId` and `migration` copies.
   * Precondition: queued.
   */
  start(moveId: string, migration: Migration): void {
    assert(this.stateNow === 'queued', `job ${this.id} starts only from queued`);
    this.attach(moveId, migration);
    this.startedAt = new Date();
    this.queue = null;
    this.moveTo('running', `started move ${moveId} with method ${this.requestedMethod}`);
  }

  /**
   * Follows a move the agent resumed after a restart (host/resumable-moves.ts): the
   * restored job's own (running, without a migration) or a new job's (queued).
   */
  resume(moveId: string, migration: Migration, copiedBytes: number): void {
    if (this.stateNow === 'queued') {
      this.start(moveId, migration);
    } else {
      assert(this.stateNow === 'running' && this.migration === null, 'resumes a restored job');
      this.attach(moveId, migration);
    }
    // The journal does not keep the speed: the job does, and the resumed copy keeps to it.
    if (this.speedBytesPerSecond > 0) migration.setSpeed(this.speedBytesPerSecond);
    this.emit(
      'message',
      `resumed move ${moveId} after the agent restarted: ${formatSize(copiedBytes)} of ` +
        `${formatSize(this.sizeBytes)} were already on the destination`,
    );
  }

  /**
   * A job that was running when the process stopped, and that the agent cannot resume: the
   * agent's recovery put the disks back where `at` says (the source unless the switchover had
   * committed).
   */
  interrupted(at: string): void {
    assert(!this.isFinished && this.stateNow !== 'queued', 'ends a restored running job');
    this.finish(this.counters());
    if (at === this.to) {
      this.moveTo(
        'succeeded',
        `the agent stopped during the switchover, after the commit: ${this.subject} is on its ` +
          `destination datastore ${at}`,
      );
      return;
    }
    const message = `the agent stopped during the move; the disk stayed on its source datastore ${at}`;
    this.error = { code: 'ERR_JOB_INTERRUPTED', message };
    this.moveTo('failed', `failed: ${message}; start the move again to retry it`);
  }

  /** A queued job's place changed (the scheduler's view); emits `queue` when it did. */
  setQueue(queue: JobQueueStatus): void {
    if (this.stateNow !== 'queued') return;
    const now = this.queue;
    if (now !== null && now.position === queue.position && now.waitingFor === queue.waitingFor) {
      return;
    }
    this.queue = queue;
    this.emit('queue', null);
  }

  private attach(moveId: string, migration: Migration): void {
    this.moveId = moveId;
    this.migration = migration;
    this.requestedMethod = migration.requestedMethod;
    this.final = null;
    // Left ref'd on purpose: cleared when the job finishes, so one that outlives its job shows
    // up as a process that will not exit (and the tests count timers).
    this.ticker = setInterval(() => this.emit('progress', null), this.progressIntervalMs);
  }

  get state(): JobState {
    return this.stateNow;
  }

  get isFinished(): boolean {
    return isTerminal(this.stateNow);
  }

  /** Announces the job; called once, after the manager has registered it. */
  announce(): void {
    this.emit(
      'created',
      `moving ${this.subject} from datastore ${this.from} to ${this.to} with method ` +
        `${this.requestedMethod}`,
    );
  }

  /** Follows one event of the migration. */
  apply(event: MigrationEvent): void {
    if (this.isFinished) return;
    switch (event.type) {
      case 'phase':
        this.phase = event.phase;
        break;
      case 'pass':
        this.pass = event.pass;
        break;
      case 'mode':
        this.mode = event.mode;
        break;
      case 'switchover':
        this.downtimeMs = event.downtimeMs;
        break;
      case 'rollback':
        this.phase = 'rollback';
        break;
      case 'offload':
        this.copyPath = event.path;
        break;
      case 'method':
      case 'message':
      case 'cost':
        break;
    }
    this.emit(event.type, describeMigrationEvent(event));
    // The runner announces the switchover as a phase before it holds the guest (migration.ts).
    if (event.type === 'phase' && event.phase === 'switchover' && this.stateNow === 'running') {
      this.moveTo('switching', 'switching over: guest I/O is held until the destination commits');
    }
  }

  /**
   * Asks the migration to stop and roll back; `ERR_JOB_STATE` unless the state allows it. A
   * queued job is cancelled at once: nothing was started.
   */
  cancel(reason: string): void {
    checkVerb(this.id, this.stateNow, 'cancel');
    if (this.stateNow === 'queued') {
      this.finish(this.counters());
      this.queue = null;
      this.moveTo('cancelled', `cancelled while queued (${reason}): nothing was started`);
      return;
    }
    assert(this.migration !== null, 'a running job holds its migration');
    if (!this.migration.cancel()) {
      // Committed between the state check and here: the switchover event is on its way.
      checkVerb(this.id, 'switching', 'cancel');
    }
    this.moveTo('cancelling', `cancelling (${reason}): rolling back to the source`);
  }

  /** Changes the copy rate at once; 0 is unlimited. */
  setSpeed(bytesPerSecond: number): void {
    checkVerb(this.id, this.stateNow, 'speed');
    // A queued job takes it when it starts.
    this.migration?.setSpeed(bytesPerSecond);
    this.speedBytesPerSecond = bytesPerSecond;
    this.emit('speed', `speed set to ${formatSpeed(bytesPerSecond)}`);
  }

  /** The move finished: the disks are served from the destination. */
  succeed(result: MoveOutcome): void {
    this.from = result.from;
    this.to = result.to;
    this.downtimeMs = result.downtimeMs;
    this.memory = result.memory ?? null;
    this.finish({ ...this.counters(), method: result.method, durationMs: result.durationMs });
    this.moveTo(
      'succeeded',
      `moved ${this.subject} to datastore ${result.to} with ${result.method} in ` +
        `${result.durationMs} ms (downtime ${result.downtimeMs} ms)`,
    );
  }

  /** The move failed or was cancelled: the disk is served from the source as before. */
  fail(error: unknown): void {
    const code = errorCodeOf(error) ?? 'ERR_INTERNAL';
    this.error = { code, message: errorMessageOf(error) };
    this.finish(this.counters());
    this.queue = null;
    const isCancel =
      code === MigrateErrorCode.Cancelled && canTransition(this.stateNow, 'cancelled');
    const where = `${this.subject} stays on datastore ${this.from}`;
    if (isCancel) this.moveTo('cancelled', `cancelled: ${where}`);
    else this.moveTo('failed', `failed: ${this.error.message} (${code}); ${where}`);
  }

  status(): JobStatus {
    const counters = this.final ?? this.counters();
    return {
      id: this.id,
      kind: 'migrate',
      moveId: this.moveId,
      queue: this.queue,
      disk: this.disk,
      vm: this.vm,
      disks: this.disks,
      from: this.from,
      to: this.to,
      sizeBytes: this.sizeBytes,
      method: counters.method,
      requestedMethod: this.requestedMethod,
      state: this.stateNow,
      phase: this.phase,
      pass: this.pass,
      mode: this.mode,
      copyPath: this.copyPath,
      speedBytesPerSecond: this.speedBytesPerSecond,
      progress: counters.progress,
      dirtyBytes: counters.dirtyBytes,
      bytesCopied: counters.bytesCopied,
      passes: counters.passes,
      createdAt: this.createdAt.toISOString(),
      startedAt: this.startedAt.toISOString(),
      finishedAt: this.finishedAt?.toISOString() ?? null,
      durationMs: counters.durationMs,
      downtimeMs: this.downtimeMs,
      memory: this.memory,
      error: this.error,
      allowed: JOB_VERBS[this.stateNow],
    };
  }

  record(): JobRecord {
    return { ...this.status(), events: [...this.log] };
  }

  /** Live from the migration; else the last kept (restored or final); else nothing yet. */
  private counters(): FinalCounters {
    const migration = this.migration;
    if (migration === null) {
      return (
        this.final ?? {
          method: this.requestedMethod,
          progress: {
            doneBytes: 0,
            totalBytes: this.sizeBytes,
            rateBytesPerSecond: 0,
            etaSeconds: null,
          },
          dirtyBytes: this.sizeBytes,
          bytesCopied: 0,
          passes: 0,
          durationMs: 0,
        }
      );
    }
    return {
      method: migration.method,
      progress: migration.progressSnapshot,
      dirtyBytes: migration.dirtyBytes,
      bytesCopied: migration.bytesCopied,
      passes: migration.passes,
      durationMs: Date.now() - this.startedAt.getTime(),
    };
  }

  /** Freezes the counters, stops the progress reports and lets go of the migration. */
  private finish(final: FinalCounters): void {
    this.final = final;
    this.finishedAt = new Date();
    if (this.ticker !== null) clearInterval(this.ticker);
    this.ticker = null;
    this.migration = null;
  }

  /** The one place a job changes state: refuses edges the table does not have. */
  private moveTo(to: JobState, message: string): void {
    assert(
      canTransition(this.stateNow, to),
      `job ${this.id}: no transition ${this.stateNow} -> ${to}`,
    );
    this.stateNow = to;
    this.emit('state', message);
  }

  private emit(type: JobEventType, message: string | null): void {
    const time = new Date().toISOString();
    if (message !== null) {
      this.log.push({ time, type, message });
      if (this.log.length > JOB_LOG_MAX) this.log.shift();
    }
    this.emitTo({ type, time, message, job: this.status() });
  }
}
