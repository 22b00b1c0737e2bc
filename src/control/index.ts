export {
  type JobAgent,
  type JobListener,
  JobManager,
  type JobManagerOptions,
  type LimitsStatus,
  type MigrationRequest,
  type ResumableMove,
} from './job-manager.js';
export type {
  JobEvent,
  JobEventType,
  JobLogEntry,
  JobQueueStatus,
  JobRecord,
  JobStatus,
} from './job-record.js';
export {
  canTransition,
  checkVerb,
  isTerminal,
  JOB_STATES,
  JOB_TRANSITIONS,
  JOB_VERBS,
  JOB_VERBS_ALL,
  JobError,
  JobErrorCode,
  type JobState,
  type JobVerb,
} from './job-states.js';
export {
  LIST_TIMEOUT_MS,
  type RemoteJobEntry,
  type RemoteJobRecord,
  type RemoteJobStatus,
  RemoteJobs,
  type UnreachableJob,
} from './remote-jobs.js';
export { LIMITS_DEFAULT, type Limits } from './scheduler.js';
export { formatSpeed, parseSpeed, SPEED_HELP } from './speed.js';
