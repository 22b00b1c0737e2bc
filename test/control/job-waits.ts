/**
 * Waiting on jobs by their events, never by sleeping (STYLE.md, "Tests").
 */

import type { JobManager } from '../../src/control/job-manager.js';
import type { JobEvent, JobRecord } from '../../src/control/job-record.js';
import { isTerminal } from '../../src/control/job-states.js';

/** Resolves with the next event of job `id` (of any job when null) that `match` accepts. */
export function nextEvent(
  jobs: JobManager,
  id: string | null,
  match: (event: JobEvent) => boolean,
): Promise<JobEvent> {
  return new Promise((resolve) => {
    const stop = jobs.subscribe((event) => {
      if (!match(event)) return;
      stop();
      resolve(event);
    }, id);
  });
}

/** Resolves with the job's record once it has finished, however it ended. */
export async function finished(jobs: JobManager, id: string): Promise<JobRecord> {
  if (!isTerminal(jobs.get(id).state)) {
    await nextEvent(jobs, id, (event) => event.type === 'state' && isTerminal(event.job.state));
  }
  return jobs.get(id);
}

/** Timers alive in the process now (ref'd ones: a job's progress ticker is one). */
export function timerCount(): number {
  return process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length;
}
