import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { runCommand } from './children.js';
import type { FerryDriverName, FerryHost } from './migrate-ferry.js';
import { startFerryAgent } from './migrate-ferry-agent.js';
import { startFerryApi } from './migrate-ferry-api.js';
import { dropCaches } from './migrate-system.js';

/** What every section of the migration benchmark works with. */
export interface BenchContext {
  /** The run's temporary directory, on the file system under test. */
  readonly dir: string;
  readonly runs: number;
  /** Seconds of guest load before each migration under load starts. */
  readonly baselineSeconds: number;
  /** Limit of each migration or copy. */
  readonly stepTimeoutMs: number;
  /** How Ferry is driven in the idle and load sections (dbt always uses `agent`). */
  readonly ferryDriver: FerryDriverName;
  /** Whether to drop the page cache before each timed copy. */
  readonly isDropCaches: boolean;
  /** Aborts on SIGINT/SIGTERM. */
  readonly stop: AbortSignal;
}

/** Before a timed step: write back and drop the page cache, when asked to and allowed. */
export async function settle(context: BenchContext): Promise<void> {
  if (!context.isDropCaches) return;
  if (!(await dropCaches())) {
    throw new Error('cannot drop the page cache (not root?): run with --no-drop-caches');
  }
}

/**
 * A Ferry over a fresh data directory `dir/ferry-data` with two datastores, `a` and `b`, in
 * `dir/a` and `dir/b` (the same file system, as the same-host moves).
 */
export async function startFerryWithTwoStores(
  context: BenchContext,
  dir: string,
  driver: FerryDriverName,
): Promise<FerryHost> {
  const dataDir = join(dir, 'ferry-data');
  await mkdir(dataDir, { recursive: true });
  const host =
    driver === 'api' ? await startFerryApi(dataDir, context.stop) : await startFerryAgent(dataDir);
  return withTwoStores(host, dir);
}

/** Adds datastores `a` and `b` in `dir/a` and `dir/b` to a started host; stops it on failure. */
export async function withTwoStores<Host extends FerryHost>(
  host: Host,
  dir: string,
): Promise<Host> {
  try {
    for (const name of ['a', 'b']) {
      await mkdir(join(dir, name), { recursive: true });
      await host.addDatastore(name, join(dir, name));
    }
  } catch (error) {
    await host.stop();
    throw error;
  }
  return host;
}

/**
 * Copies `master` to `copyPath` with cp, keeping holes (`thin`) or writing every block, so an
 * image made once serves every run that consumes one (an import moves its file away).
 */
export async function copyImage(
  master: string,
  copyPath: string,
  provisioning: 'thin' | 'thick',
  timeoutMs: number,
): Promise<void> {
  const sparse = provisioning === 'thin' ? '--sparse=always' : '--sparse=never';
  await runCommand('cp', 'cp', [sparse, master, copyPath], { timeoutMs });
}
