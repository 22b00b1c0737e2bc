import type { JobEvent, JobRecord, JobStatus } from '../control/job-record.js';
import { isTerminal } from '../control/job-states.js';
import { FerryError } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import { CliErrorCode } from './api-client.js';
import { type CliContext, printJson } from './context.js';
import { describeSource, describeSubject, formatDuration } from './job-format.js';
import { createJobRenderer } from './progress-bar.js';
import { ExitCode } from './run.js';

/**
 * Following a job to its end (`ferry migrate`, `ferry job watch`): reads the job's event stream
 * (GET /v1/jobs/:id/events), draws it, and reports the outcome. Ctrl-C stops following, never the
 * job: the job runs on in the server, and the message says how to look at it or cancel it.
 */
export type FollowOutcome =
  | { readonly kind: 'finished'; readonly record: JobRecord & { readonly runsOn?: string } }
  | { readonly kind: 'detached'; readonly status: JobStatus };

export async function followJob(
  context: CliContext,
  job: JobStatus & { readonly runsOn?: string },
): Promise<FollowOutcome> {
  const abort = new AbortController();
  const stopWatching = context.onInterrupt(() => abort.abort());
  const renderer = createJobRenderer(context);
  let last = job;
  try {
    const path = `/v1/jobs/${encodeURIComponent(job.id)}/events`;
    for await (const event of context.api.stream(path, abort.signal)) {
      if (event.type === 'job') {
        const record = parseData<JobRecord>(event.data);
        renderer.start(record);
        last = record;
      } else {
        const change = parseData<JobEvent>(event.data);
        renderer.update(change);
        last = change.job;
      }
    }
  } catch (error) {
    // Ctrl-C aborts the read under way; anything else (the server went away) is a failure.
    if (!abort.signal.aborted) throw error;
  } finally {
    stopWatching();
    renderer.stop();
  }
  if (abort.signal.aborted) return { kind: 'detached', status: last };
  // The stream ends after the job's last event; before it only when the server stops, and a
  // stopping server cancels its jobs (each disk stays where it was).
  if (!isTerminal(last.state)) {
    // Relayed from the host that runs the job: its link to this one may have gone instead.
    const why =
      job.runsOn === undefined
        ? 'a server that stops cancels its jobs'
        : `the job runs on host ${job.runsOn}: the link to it may have gone (see ferry job show ` +
          `${job.id}), or a server that stops cancels its jobs`;
    throw new FerryError(
      CliErrorCode.StreamEnded,
      `the server ended the event stream while job ${job.id} was ${last.state}; ${why}, ` +
        `leaving ${describeSubject(job)} on ${describeSource(job)}`,
    );
  }
  // The whole record, with its history, for --json.
  const record = await context.api.get<JobRecord & { readonly runsOn?: string }>(
    `/v1/jobs/${encodeURIComponent(job.id)}`,
  );
  return { kind: 'finished', record };
}

/**
 * Prints how a followed job ended and returns the exit code: 0 moved, 1 failed or cancelled
 * (the guest runs on the source), 130 detached with Ctrl-C. `--json` prints the final record.
 */
export function reportOutcome(
  context: CliContext,
  outcome: FollowOutcome,
  isJson: boolean,
): number {
  if (outcome.kind === 'detached') {
    const id = outcome.status.id;
    context.printError(
      `\nStopped following job ${id}; it keeps running on the server.\n` +
        `  follow it again:  ferry job watch ${id}\n` +
        `  show it:          ferry job show ${id}\n` +
        `  cancel it:        ferry job cancel ${id}\n`,
    );
    return ExitCode.Interrupted;
  }
  const { record } = outcome;
  if (isJson) printJson(context, record);
  if (record.state === 'succeeded') {
    if (!isJson) context.print(describeSuccess(record));
    return ExitCode.Ok;
  }
  const failure = record.error ?? { message: 'no reason given', code: 'no code' };
  const why =
    record.state === 'cancelled'
      ? `job ${record.id} was cancelled`
      : `job ${record.id} failed: ${failure.message} (${failure.code})`;
  context.printError(
    `ferry: ${why}. ${capitalise(describeSubject(record))} was not moved: its guest runs on ` +
      `${describeSource(record)} as before.\n`,
  );
  return ExitCode.Failed;
}

/** `Moved disk vm1 from local to fast with mirror: copied 1G in 1 pass in 3.2 s; downtime 2 ms.` */
export function describeSuccess(record: JobRecord): string {
  const method =
    record.method === record.requestedMethod
      ? record.method
      : `${record.method} (${record.requestedMethod} handed over)`;
  const passes = record.passes === 1 ? '1 pass' : `${record.passes} passes`;
  const downtime = record.downtimeMs === null ? 'unknown' : formatDuration(record.downtimeMs);
  const { memory } = record;
  // A running VM that moved host: the guest's whole pause, and what it was made of.
  const pause =
    memory === null || memory === undefined
      ? `downtime ${downtime}.`
      : `guest paused ${formatDuration(memory.pauseMs)} (QEMU downtime ` +
        `${formatDuration(memory.qemuDowntimeMs)}, storage switchover ` +
        `${formatDuration(memory.storageSwitchoverMs)}; ${formatSize(memory.ramBytes)} of memory sent).`;
  return (
    `Moved ${describeSubject(record)} from ${record.from} to ${record.to} with ${method}: copied ` +
    `${formatSize(record.bytesCopied)} in ${passes} in ${formatDuration(record.durationMs)}; ` +
    pause
  );
}

function capitalise(text: string): string {
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}`;
}

function parseData<T>(data: string): T {
  try {
    return JSON.parse(data) as T;
  } catch (error) {
    throw new FerryError(CliErrorCode.BadReply, 'the event stream sent data that is not JSON', {
      cause: error,
    });
  }
}
