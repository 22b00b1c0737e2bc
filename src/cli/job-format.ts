import type { JobStatus } from '../control/job-record.js';
import { formatSpeed } from '../control/speed.js';
import { formatSize } from '../util/size.js';

/**
 * How the CLI words a job's numbers, shared by the progress bar, the line log, `job list` and
 * `job show`. A total that grew (blocks dirtied again must be copied again) is shown as grown,
 * never hidden: the percentage is of the total as it is now (STYLE.md, "Long-running work").
 */

/** What a job moves, as a sentence names it: `disk vm1`, or `VM web (disks web-os, web-data)`. */
export function describeSubject(job: Pick<JobStatus, 'disk' | 'vm' | 'disks'>): string {
  return job.vm === null ? `disk ${job.disk}` : `VM ${job.vm} (disks ${job.disks.join(', ')})`;
}

/**
 * Where the moved data comes from: `datastore local`, or `datastore local of host a` for a job
 * another host runs (`runsOn`, shown by the destination of a cross-host move).
 */
export function describeSource(
  job: Pick<JobStatus, 'from'> & { readonly runsOn?: string },
): string {
  return job.runsOn === undefined
    ? `datastore ${job.from}`
    : `datastore ${job.from} of host ${job.runsOn}`;
}

/** `1.75 ms`, `850 ms`, `3.2 s`, `4m05s`, `2h07m`: downtimes are judged in single milliseconds. */
export function formatDuration(ms: number): string {
  if (ms < 10) return `${Number(ms.toFixed(2))} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const seconds = Math.round(ms / 1000);
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${pad2(seconds % 60)}s`;
  const minutes = Math.round(seconds / 60);
  return `${Math.floor(minutes / 60)}h${pad2(minutes % 60)}m`;
}

/** Whole percent done, floored so 100% means done. */
export function percentDone(status: Pick<JobStatus, 'progress'>): number {
  const { doneBytes, totalBytes } = status.progress;
  return totalBytes === 0 ? 100 : Math.floor((doneBytes * 100) / totalBytes);
}

/** `450M/1G`, or `450M/1.1G (+100M again)` once the total passed the disk's size. */
export function formatAmount(status: Pick<JobStatus, 'progress' | 'sizeBytes'>): string {
  const { doneBytes, totalBytes } = status.progress;
  const grownBytes = totalBytes - status.sizeBytes;
  const grown = grownBytes > 0 ? ` (+${formatSize(grownBytes)} again)` : '';
  return `${formatSize(doneBytes)}/${formatSize(totalBytes)}${grown}`;
}

/** `120M/s ETA 5s`, `- ETA ?` before the rate is known. */
export function formatRate(status: JobStatus): string {
  const { rateBytesPerSecond, etaSeconds } = status.progress;
  const rate = rateBytesPerSecond > 0 ? `${formatSize(rateBytesPerSecond)}/s` : '-';
  const eta =
    etaSeconds === null
      ? '?'
      : etaSeconds < 60
        ? `${etaSeconds}s`
        : formatDuration(etaSeconds * 1000);
  return `${rate} ETA ${eta}`;
}

/** `mirror sync · copy · reflink · pass 2 · dirty 12M`: what the method is doing. */
export function formatActivity(status: JobStatus): string {
  if (status.state === 'queued') return formatQueued(status);
  const method = status.mode === null ? status.method : `${status.method} ${status.mode}`;
  const parts = [method];
  if (status.state === 'cancelling') parts.push('cancelling');
  if (status.phase !== null) parts.push(status.phase);
  // How the data moves: in the kernel (reflink, copy_file_range) or through the agent.
  if (status.copyPath !== null && status.copyPath !== 'read-write') parts.push(status.copyPath);
  if (status.pass > 0) parts.push(`pass ${status.pass}`);
  parts.push(`dirty ${formatSize(status.dirtyBytes)}`);
  if (status.speedBytesPerSecond > 0) parts.push(`max ${formatSpeed(status.speedBytesPerSecond)}`);
  return parts.join(' · ');
}

/** `queued #2 · waiting for host limit: 2 of 2 migrations running on this host · max 10M/s`. */
export function formatQueued(status: Pick<JobStatus, 'queue' | 'speedBytesPerSecond'>): string {
  const parts =
    status.queue === null
      ? ['queued']
      : [`queued #${status.queue.position}`, `waiting for ${status.queue.waitingFor}`];
  if (status.speedBytesPerSecond > 0) parts.push(`max ${formatSpeed(status.speedBytesPerSecond)}`);
  return parts.join(' · ');
}

/** Local wall-clock time of an ISO timestamp, `HH:MM:SS`. */
export function formatClock(iso: string): string {
  return new Date(iso).toTimeString().slice(0, 8);
}

function pad2(value: number): string {
  return String(value).padStart(2, '0');
}
