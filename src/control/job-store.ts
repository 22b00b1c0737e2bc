import type { Database, Statement } from 'better-sqlite3';
import { ensureSchema } from './database.js';
import {
  JOB_LOG_MAX,
  type JobEvent,
  type JobLogEntry,
  type JobRecord,
  type JobStatus,
} from './job-record.js';
import { isTerminal } from './job-states.js';

/**
 * The jobs and their histories in the control plane's database (schema `jobs`), so that a
 * restarted `ferry serve` lists what ran and runs what was queued. A job's row holds its latest
 * status as JSON and, while it has not started, the request to start it with; its events are
 * rows of their own, of which the newest JOB_LOG_MAX are kept once the job ends.
 *
 * Written on every logged event and state change; the periodic progress is written at most every
 * PROGRESS_SAVE_MS per job (the counters a restart shows may be that old, never the state).
 */
const SCHEMA = [
  {
    version: 1,
    sql: `
      CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        move_id TEXT,
        request TEXT NOT NULL,
        status TEXT NOT NULL,
        updated_at TEXT NOT NULL
      );
      CREATE INDEX jobs_state ON jobs (state);
      CREATE TABLE job_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        time TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL
      );
      CREATE INDEX job_events_job ON job_events (job_id, seq);
    `,
  },
] as const;

const PROGRESS_SAVE_MS = 5000;

/** A job as the database holds it: its record and the request it was started with. */
export interface StoredJob {
  readonly record: JobRecord;
  /** The `MigrationRequest` as given (JSON); what a queued job starts with after a restart. */
  readonly request: unknown;
}

export class JobStore {
  private readonly insertJob: Statement;
  private readonly updateJob: Statement;
  private readonly insertEvent: Statement;
  private readonly trimEvents: Statement;
  private readonly deleteJob: Statement;
  /** When each job's status was last written, ms. */
  private readonly savedAtMs = new Map<string, number>();

  constructor(private readonly db: Database) {
    ensureSchema(db, 'jobs', SCHEMA);
    this.insertJob = db.prepare(
      'INSERT INTO jobs (id, state, move_id, request, status, updated_at) VALUES (?, ?, ?, ?, ?, ?)',
    );
    this.updateJob = db.prepare(
      'UPDATE jobs SET state = ?, move_id = ?, status = ?, updated_at = ? WHERE id = ?',
    );
    this.insertEvent = db.prepare(
      'INSERT INTO job_events (job_id, time, type, message) VALUES (?, ?, ?, ?)',
    );
    this.trimEvents = db.prepare(
      'DELETE FROM job_events WHERE job_id = ? AND seq NOT IN ' +
        '(SELECT seq FROM job_events WHERE job_id = ? ORDER BY seq DESC LIMIT ?)',
    );
    this.deleteJob = db.prepare('DELETE FROM jobs WHERE id = ?');
  }

  /** Writes a new job (before its first event). */
  add(status: JobStatus, request: unknown): void {
    this.insertJob.run(
      status.id,
      status.state,
      status.moveId,
      JSON.stringify(request),
      JSON.stringify(status),
      new Date().toISOString(),
    );
    this.savedAtMs.set(status.id, Date.now());
  }

  /** Follows one event of a job: logged ones always, progress at a bounded rate. */
  record(event: JobEvent): void {
    const { job } = event;
    const nowMs = Date.now();
    const savedAtMs = this.savedAtMs.get(job.id) ?? 0;
    if (event.type === 'progress' && nowMs - savedAtMs < PROGRESS_SAVE_MS) return;
    this.db.transaction(() => {
      if (event.message !== null)
        this.insertEvent.run(job.id, event.time, event.type, event.message);
      this.updateJob.run(job.state, job.moveId, JSON.stringify(job), event.time, job.id);
      if (isTerminal(job.state)) this.trimEvents.run(job.id, job.id, JOB_LOG_MAX);
    })();
    if (isTerminal(job.state)) this.savedAtMs.delete(job.id);
    else this.savedAtMs.set(job.id, nowMs);
  }

  /** Forgets a job (one evicted from the history the store keeps). */
  remove(id: string): void {
    this.deleteJob.run(id);
  }

  /**
   * The newest `finishedMax` finished jobs and every unfinished one, oldest first, with their
   * latest events; older finished jobs are deleted.
   */
  load(finishedMax: number): StoredJob[] {
    const rows = this.db
      .prepare('SELECT id, state, request, status FROM jobs ORDER BY seq')
      .all() as { id: string; state: string; request: string; status: string }[];
    const finished = rows.filter((row) => isTerminal(row.state as JobStatus['state']));
    const dropped = new Set(
      finished.slice(0, Math.max(0, finished.length - finishedMax)).map((row) => row.id),
    );
    const events = this.db.prepare(
      'SELECT time, type, message FROM (SELECT seq, time, type, message FROM job_events ' +
        'WHERE job_id = ? ORDER BY seq DESC LIMIT ?) ORDER BY seq',
    );
    const kept: StoredJob[] = [];
    for (const row of rows) {
      if (dropped.has(row.id)) {
        this.remove(row.id);
        continue;
      }
      const status = JSON.parse(row.status) as JobStatus;
      const log = events.all(row.id, JOB_LOG_MAX) as JobLogEntry[];
      kept.push({ record: { ...status, events: log }, request: JSON.parse(row.request) });
    }
    return kept;
  }
}
