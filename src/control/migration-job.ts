import type { MoveOutcome } from '../host/agent.js';
import type { CopyPath } from '../migrate/copy-offload.js';
import { MigrateErrorCode } from '../migrate/errors.js';
import type { MethodName } from '../migrate/method.js';
import type { Migration, MigrationEvent } from '../migrate/migration.js';
import type { ProgressSnapshot } from '../migrate/progress.js';
import { assert } from '../util/assert.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import {
  describeMigrationEvent,
  JOB_LOG_MAX,
  type JobEvent,
  type JobEventType,
  type JobLogEntry,
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
  readonly migration: Migration;
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
 * One disk move as a job: follows its migration's events, moves along the state table
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
  private readonly requestedMethod: MethodName;
  private readonly createdAt: Date;
  private readonly startedAt = new Date();
  private readonly emitTo: (event: JobEvent) => void;
  private migration: Migration | null;
  private stateNow: JobState = 'running';
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
  private ticker: NodeJS.Timeout | null;

  constructor(init: MigrationJobInit) {
    this.id = init.id;
    this.disk = init.disk;
    this.vm = init.vm;
    this.disks = init.disks;
    this.subject =
      init.vm === null ? `disk ${init.disk}` : `VM ${init.vm} (disks ${init.disks.join(', ')})`;
    this.sizeBytes = init.sizeBytes;
    this.requestedMethod = init.migration.requestedMethod;
    this.createdAt = init.createdAt;
    this.emitTo = init.emit;
    this.migration = init.migration;
    this.from = init.from;
    this.to = init.to;
    this.speedBytesPerSecond = init.speedBytesPerSecond;
    // Left ref'd on purpose: cleared when the job finishes, so one that outlives its job shows
    // up as a process that will not exit (and the tests count timers).
    this.ticker = setInterval(() => this.emit('progress', null), init.progressIntervalMs);
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

  /** Asks the migration to stop and roll back; `ERR_JOB_STATE` unless the state allows it. */
  cancel(reason: string): void {
    checkVerb(this.id, this.stateNow, 'cancel');
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
    assert(this.migration !== null, 'a running job holds its migration');
    this.migration.setSpeed(bytesPerSecond);
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

  private counters(): FinalCounters {
    const migration = this.migration;
    assert(migration !== null, 'counters are read from the migration until the job finishes');
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
