import type { CopyPath } from '../migrate/copy-offload.js';
import type { MethodName } from '../migrate/method.js';
import type { MigrationEvent } from '../migrate/migration.js';
import type { ProgressSnapshot } from '../migrate/progress.js';
import { formatSize } from '../util/size.js';
import type { JobState, JobVerb } from './job-states.js';

/**
 * What the outside sees of a job: plain JSON, the same in the API, the event stream, the CLI's
 * `--json` and the dashboard. Sizes are bytes, times ISO 8601 (UTC), durations milliseconds.
 */
export interface JobStatus {
  /** Made by the job manager (8 hex digits); not the agent's move id (see `moveId`). */
  readonly id: string;
  readonly kind: 'migrate';
  /** The agent's move journal id once the move started; null while queued. */
  readonly moveId: string | null;
  /** Where a queued job stands (scheduler.ts); null once it started. */
  readonly queue: JobQueueStatus | null;
  /** The disk moved; for a VM move, the VM's name (see `vm` and `disks`). */
  readonly disk: string;
  /** The VM moved (its home directory and disks), or null for a disk move. */
  readonly vm: string | null;
  /** Every disk the job moves, switched over together. */
  readonly disks: readonly string[];
  /** Datastore the disk (a VM's home) is moved from, and to. */
  readonly from: string;
  readonly to: string;
  /** Size of the disk (a VM's disks together); `progress.totalBytes` passes it when blocks must be copied again. */
  readonly sizeBytes: number;
  /** The method running now (dbt that cannot converge continues as mirror). */
  readonly method: MethodName;
  readonly requestedMethod: MethodName;
  readonly state: JobState;
  /** The method's current phase (`copy`, `switchover`, `rollback`, ...); null before the first. */
  readonly phase: string | null;
  /** The latest copy pass the method reported; 0 before the first. */
  readonly pass: number;
  /** The mirror's write mode, once it reported one. */
  readonly mode: 'sync' | 'async' | null;
  /**
   * How the copy moved data (copy-offload.ts): `reflink`, `copy_file_range` or `read-write`,
   * the latest way taken; null before the first data run (or for a disk with no data).
   */
  readonly copyPath: CopyPath | null;
  /** Requested copy rate; 0 is unlimited. */
  readonly speedBytesPerSecond: number;
  readonly progress: ProgressSnapshot;
  /** Bytes still to copy. */
  readonly dirtyBytes: number;
  readonly bytesCopied: number;
  readonly passes: number;
  readonly createdAt: string;
  readonly startedAt: string;
  readonly finishedAt: string | null;
  /** Time since the start, or from start to end once finished. */
  readonly durationMs: number;
  /** Time guest I/O was held at the switchover; null until it happened. */
  readonly downtimeMs: number | null;
  /**
   * A running VM moved to another host, once done: its pause in parts — QEMU's own downtime,
   * the storage switchover, and from the guest stopping here to it running there.
   */
  readonly memory: {
    readonly qemuDowntimeMs: number;
    readonly storageSwitchoverMs: number;
    readonly pauseMs: number;
    readonly ramBytes: number;
    readonly attempts: number;
  } | null;
  readonly error: { readonly code: string; readonly message: string } | null;
  /** The verbs the job's state allows now (job-states.ts). */
  readonly allowed: readonly JobVerb[];
}

/** A queued job's place: 1 is the next to start; `waitingFor` says which limit holds it. */
export interface JobQueueStatus {
  readonly position: number;
  readonly waitingFor: string;
}

/** One line of a job's history. */
export interface JobLogEntry {
  readonly time: string;
  readonly type: JobEventType;
  readonly message: string;
}

export interface JobRecord extends JobStatus {
  /** The latest events, oldest first (at most JOB_LOG_MAX). */
  readonly events: readonly JobLogEntry[];
}

export type JobEventType =
  | 'created'
  | 'state'
  | 'phase'
  | 'pass'
  | 'mode'
  | 'method'
  | 'message'
  | 'speed'
  | 'switchover'
  | 'rollback'
  | 'offload'
  | 'cost'
  | 'queue'
  | 'progress';

/**
 * A change of a job, as listeners and the event stream see it: what happened (`message` is null
 * for the periodic `progress` and for `queue`, a queued job's new place) and the job's status after it.
 */
export interface JobEvent {
  readonly type: JobEventType;
  readonly time: string;
  readonly message: string | null;
  readonly job: JobStatus;
}

/** Events kept per job; older ones are dropped (the logs keep everything). */
export const JOB_LOG_MAX = 50;

/** A migration event as a line of the job's history. */
export function describeMigrationEvent(event: MigrationEvent): string {
  switch (event.type) {
    case 'phase':
      return `phase ${event.phase}`;
    case 'pass':
      return `pass ${event.pass}: ${formatSize(event.dirtyBytes)} to copy`;
    case 'mode':
      return (
        (event.mode === 'sync'
          ? 'mirror is synchronous: guest writes are acknowledged once on both sides'
          : 'mirror is asynchronous: guest writes are acknowledged once on the source') +
        ` (${event.reason}; ${formatSize(event.queuedBytes)} queued)`
      );
    case 'method':
      return `continuing with method ${event.method}: ${event.reason}`;
    case 'message':
      return event.message;
    case 'switchover':
      return (
        `switched over; guest I/O was held ${event.downtimeMs} ms (drain ${event.drainMs}, ` +
        `final copy ${event.finalCopyMs}, flush ${event.flushMs}, commit ${event.commitMs} ms)`
      );
    case 'rollback':
      return `rolling back to the source: ${event.reason}`;
    case 'offload':
      return `disk ${event.disk}: data copied by ${describeCopyPath(event.path)}`;
    case 'cost':
      return `${event.part} took ${event.ms} ms${event.detail === undefined ? '' : ` (${event.detail})`}`;
  }
}

function describeCopyPath(path: CopyPath): string {
  switch (path) {
    case 'reflink':
      return 'reflink (the file system shares the extents; no data moves)';
    case 'copy_file_range':
      return 'copy_file_range (the kernel copies; no buffer in the agent)';
    case 'read-write':
      return 'reading and writing through the agent';
  }
}
