import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { withTwoStores } from './migrate-context.js';
import { type FerryApiHost, startFerryApi } from './migrate-ferry-api.js';
import { dropCaches } from './migrate-system.js';

/** What both sections of the scale benchmark work with. */
export interface ScaleContext {
  /** The run's temporary directory, on the file system under test. */
  readonly dir: string;
  /** Share of each thin disk allocated, and the size of its extents. */
  readonly fraction: number;
  /**
   * The size section's allocated bytes for every size instead of `fraction` of it (`--allocated`):
   * with the data fixed, any growth of the time with the size is the size's alone.
   */
  readonly allocatedBytes: number | undefined;
  readonly extentBytes: number;
  /** Limit of each move or copy. */
  readonly stepTimeoutMs: number;
  /** Whether to drop the page cache before each timed copy. */
  readonly isDropCaches: boolean;
  /** Node flags for the agent (`--cpu-prof --cpu-prof-dir=...`), none by default. */
  readonly agentNodeArgs: readonly string[];
  /** Aborts on SIGINT/SIGTERM. */
  readonly stop: AbortSignal;
}

/** Before a timed step: write back and drop the page cache, when asked to. */
export async function settleCaches(context: ScaleContext): Promise<void> {
  if (!context.isDropCaches) return;
  if (!(await dropCaches())) {
    throw new Error('cannot drop the page cache (not root?): run with --no-drop-caches');
  }
}

/**
 * `ferry serve` over a fresh data directory `dir/ferry-data`, with datastores `a` and `b` in
 * `dir/a` and `dir/b` (one file system, as a same-host move), driven through its REST API.
 */
export async function startScaleFerry(context: ScaleContext, dir: string): Promise<FerryApiHost> {
  const dataDir = join(dir, 'ferry-data');
  await mkdir(dataDir, { recursive: true });
  const host = await startFerryApi(dataDir, context.stop, context.agentNodeArgs);
  return withTwoStores(host, dir);
}

/** Where disk `disk`'s image lives in datastore `store` of a host started in `dir`. */
export function imagePathOf(dir: string, store: string, disk: string): string {
  return join(dir, store, `${disk}.raw`);
}
