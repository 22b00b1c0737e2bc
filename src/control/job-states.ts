/**
 * The two tables that govern a job (STYLE.md, "Long-running work"): which state may follow
 * which, and which user verbs each state allows. The job manager moves a job only along
 * `JOB_TRANSITIONS` (through `checkTransition`), and the API answers 409 `ERR_JOB_STATE` by
 * consulting `JOB_VERBS` (through `checkVerb`), so the message always says what is allowed.
 *
 *   queued ──► running               (the scheduler started it: within the host and datastore limits)
 *      └───► cancelled              (cancelled while queued: nothing had started, nothing to undo)
 *      └───► failed                 (the agent refused it when its turn came, e.g. no space left)
 *
 *   running ──► switching ──► succeeded
 *      │            ├───────► failed        (the commit failed: rolled back to the source)
 *      │            └───────► cancelled     (cancelled by the agent itself before the commit)
 *      ├──► cancelling ──► cancelled        (rolled back: the guest runs on the source)
 *      │        ├────────► succeeded        (the switchover committed before the cancel landed)
 *      │        └────────► failed           (the rollback itself failed)
 *      ├──► failed                          (copy failed: rolled back to the source)
 *      ├──► cancelled                       (cancelled by the agent itself, e.g. at shutdown)
 *      └──► succeeded                       (a move that finished without reporting its switchover)
 *
 * A job is `queued` until the scheduler (scheduler.ts) starts it within the per-host and
 * per-datastore limits (DESIGN.md, "Control plane"); only then does the agent create the
 * destination and journal the move (`JobStatus.moveId`).
 */
import { FerryError } from '../util/errors.js';

export const JOB_STATES = [
  'queued',
  'running',
  'switching',
  'cancelling',
  'succeeded',
  'failed',
  'cancelled',
] as const;
export type JobState = (typeof JOB_STATES)[number];

/** What a user can ask of a job besides reading it. */
export const JOB_VERBS_ALL = ['cancel', 'speed'] as const;
export type JobVerb = (typeof JOB_VERBS_ALL)[number];

export const JOB_TRANSITIONS: Readonly<Record<JobState, readonly JobState[]>> = {
  queued: ['running', 'cancelled', 'failed'],
  running: ['switching', 'cancelling', 'failed', 'cancelled', 'succeeded'],
  switching: ['succeeded', 'failed', 'cancelled'],
  cancelling: ['cancelled', 'succeeded', 'failed'],
  succeeded: [],
  failed: [],
  cancelled: [],
};

/**
 * Verbs each state allows. Neither is allowed during the switchover: the guest's I/O is held
 * and the outcome is decided within the downtime target, so a cancel would only lengthen it.
 */
export const JOB_VERBS: Readonly<Record<JobState, readonly JobVerb[]>> = {
  queued: ['cancel', 'speed'],
  running: ['cancel', 'speed'],
  switching: [],
  cancelling: [],
  succeeded: [],
  failed: [],
  cancelled: [],
};

/** What each state means to the person reading an error message. */
const STATE_MEANING: Readonly<Record<JobState, string>> = {
  queued: 'is waiting for its turn',
  running: 'is copying',
  switching: 'is switching over',
  cancelling: 'is being cancelled (rolling back to the source)',
  succeeded: 'has finished',
  failed: 'has failed',
  cancelled: 'was cancelled',
};

export const JobErrorCode = {
  /** No job of that id (never existed, or finished long enough ago to be forgotten). */
  NotFound: 'ERR_JOB_NOT_FOUND',
  /** The job's state does not allow the verb asked for. */
  State: 'ERR_JOB_STATE',
  /**
   * This host is at its migration limit and turns away a move another host asks to make here;
   * that host keeps the move queued and asks again.
   */
  HostBusy: 'ERR_HOST_BUSY',
} as const;
export type JobErrorCode = (typeof JobErrorCode)[keyof typeof JobErrorCode];

export class JobError extends FerryError<JobErrorCode> {
  override readonly name = 'JobError';
}

export function isTerminal(state: JobState): boolean {
  return JOB_TRANSITIONS[state].length === 0;
}

export function canTransition(from: JobState, to: JobState): boolean {
  return JOB_TRANSITIONS[from].includes(to);
}

/** Throws `ERR_JOB_STATE` unless `state` allows `verb`; the message says what it does allow. */
export function checkVerb(jobId: string, state: JobState, verb: JobVerb): void {
  const allowed = JOB_VERBS[state];
  if (allowed.includes(verb)) return;
  const where = JOB_STATES.filter((s) => JOB_VERBS[s].includes(verb));
  const now =
    allowed.length === 0 ? 'it allows nothing now' : `it allows only ${allowed.join(', ')}`;
  throw new JobError(
    JobErrorCode.State,
    `cannot ${verb} job ${jobId}: it ${STATE_MEANING[state]} (state ${state}); ${now}, ` +
      `and ${verb} is allowed only while ${where.join(' or ')}`,
  );
}
