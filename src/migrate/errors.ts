import { FerryError } from '../util/errors.js';

/** Codes of the migration engine's operating errors; src/api/error-table.ts maps each. */
export const MigrateErrorCode = {
  /** The job was cancelled by its user; the guest runs on the source. */
  Cancelled: 'ERR_CANCELLED',
  /** Copying to the destination failed (its device reported an error); the guest is untouched. */
  TargetFailed: 'ERR_TARGET_FAILED',
  /** Reading the source for the copy failed. */
  SourceFailed: 'ERR_SOURCE_FAILED',
  /**
   * The commit's outcome cannot be learned (a peer host did not answer, and the agent is
   * closing): the disks stay held, neither rolled back nor switched; recovery decides.
   */
  CommitUnknown: 'ERR_COMMIT_UNKNOWN',
} as const;
export type MigrateErrorCode = (typeof MigrateErrorCode)[keyof typeof MigrateErrorCode];

export class MigrateError extends FerryError<MigrateErrorCode> {
  override readonly name = 'MigrateError';
}

/** The error a cancelled job's work rejects with. */
export function cancelledError(): MigrateError {
  return new MigrateError(MigrateErrorCode.Cancelled, 'the job was cancelled');
}

/** Rejects with the cancellation error if `signal` has fired. */
export function checkNotCancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw cancelledError();
}
