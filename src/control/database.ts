import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';

/**
 * The control plane's embedded store (DESIGN.md, "Control plane"): one SQLite file,
 * `<data dir>/ferry.db`. It is the inventory, not the authority: where a disk lives is decided by
 * the descriptors and the move journal in the datastores, so a lost or corrupt database is rebuilt
 * from them at the next start (only the history of finished jobs is lost with it).
 *
 * Each store module owns its tables and declares them with `ensureSchema`: a named schema with a
 * version, whose statements run once, in one transaction, when the recorded version is older.
 * A module that changes its tables adds a step; nothing outside it touches them.
 */
export type Database = BetterSqlite3.Database;

export const DATABASE_FILE = 'ferry.db';

/** One step of a module's schema: statements that take it from `version - 1` to `version`. */
export interface SchemaStep {
  readonly version: number;
  readonly sql: string;
}

/**
 * Opens (creating if missing) the database at `path`. WAL with `synchronous = NORMAL`: a commit
 * is one append to the log, without an fsync; a power cut may lose the last transactions, never
 * corrupt the file. Nothing the guest relies on lives here (see above), so that is the right
 * trade for a store written on every job event.
 */
export function openDatabase(path: string): Database {
  if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
  const db = new BetterSqlite3(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  db.exec(
    'CREATE TABLE IF NOT EXISTS schema_versions (name TEXT PRIMARY KEY, version INTEGER NOT NULL)',
  );
  return db;
}

/** Brings schema `name` to its newest step; returns the version it was at before. */
export function ensureSchema(db: Database, name: string, steps: readonly SchemaStep[]): number {
  const row = db.prepare('SELECT version FROM schema_versions WHERE name = ?').get(name) as
    | { version: number }
    | undefined;
  const current = row?.version ?? 0;
  const pending = steps.filter((step) => step.version > current);
  if (pending.length === 0) return current;
  db.transaction(() => {
    for (const step of pending) db.exec(step.sql);
    const newest = Math.max(...pending.map((step) => step.version));
    db.prepare(
      'INSERT INTO schema_versions (name, version) VALUES (?, ?) ' +
        'ON CONFLICT(name) DO UPDATE SET version = excluded.version',
    ).run(name, newest);
  })();
  return current;
}
