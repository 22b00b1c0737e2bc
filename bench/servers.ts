import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type Child,
  freePort,
  runCommand,
  spawnChild,
  stopChild,
  waitForPort,
} from './children.js';

/**
 * The three NBD servers the benchmark compares, each started fresh as a child process over the
 * same raw image and stopped after its jobs:
 *
 * - `ferry`: the product (`ferry serve` over a data directory that holds the image as disk
 *   `bench`), or with `--ferry=direct` the NBD server over the raw backend alone;
 * - `qemu-nbd`: QEMU's server, write-back cache like ours (page cache, flush on request);
 * - `nbdkit`: its file plugin.
 */
export type ServerName = 'ferry' | 'qemu-nbd' | 'nbdkit';
export type FerryMode = 'product' | 'direct';

export interface RunningServer {
  readonly uri: string;
  stop(): Promise<void>;
}

export interface ServerSpec {
  readonly name: ServerName;
  start(): Promise<RunningServer>;
}

const START_TIMEOUT_MS = 30_000;

/** The repository root: this file runs as dist/bench/servers.js. */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FERRY_BIN = join(REPO_ROOT, 'bin', 'ferry.js');
const FERRY_DIRECT = join(REPO_ROOT, 'dist', 'bench', 'ferry-direct.js');

/** True when the product's entry is built, so `ferry serve` can be benchmarked. */
export function isFerryProductBuilt(): boolean {
  return existsSync(FERRY_BIN) && existsSync(join(REPO_ROOT, 'dist', 'src', 'bin', 'ferry.js'));
}

function running(child: Child, uri: string): RunningServer {
  return { uri, stop: () => stopChild(child) };
}

/**
 * Starts `ferry serve` over `dataDir` on free ports and resolves once its API listens (which it
 * does last, once every disk is open and NBD is up); the caller stops the child. `nodeArgs` go to
 * Node before the script (`--cpu-prof`, `--heap-prof`): the child is the agent's own process.
 */
export async function startFerryServe(
  dataDir: string,
  nodeArgs: readonly string[] = [],
): Promise<{ child: Child; nbdPort: number; apiPort: number }> {
  const nbdPort = await freePort();
  const apiPort = await freePort();
  const child = spawnChild('ferry serve', process.execPath, [
    ...nodeArgs,
    FERRY_BIN,
    'serve',
    '--data',
    dataDir,
    '--nbd',
    `127.0.0.1:${nbdPort}`,
    '--api',
    `127.0.0.1:${apiPort}`,
  ]);
  try {
    // The API listens last, once every disk is open and NBD is up.
    await waitForPort(child, apiPort, START_TIMEOUT_MS);
  } catch (error) {
    await stopChild(child);
    throw error;
  }
  return { child, nbdPort, apiPort };
}

/**
 * Adopts `imagePath` as disk `bench` of a new data directory with `ferry disk import` (which
 * moves the file into the datastore) and returns where the image now is.
 */
export async function importIntoFerry(dataDir: string, imagePath: string): Promise<string> {
  const { child, apiPort } = await startFerryServe(dataDir);
  try {
    const stdout = await runCommand(
      'ferry disk import',
      process.execPath,
      [FERRY_BIN, 'disk', 'import', 'bench', imagePath, '--json'],
      { timeoutMs: 30_000, env: { ...process.env, FERRY_API: `http://127.0.0.1:${apiPort}` } },
    );
    const disk = JSON.parse(stdout) as { image?: unknown };
    if (typeof disk.image !== 'string') throw new Error(`ferry disk import said: ${stdout}`);
    return disk.image;
  } finally {
    await stopChild(child);
  }
}

export function ferryProduct(dataDir: string): ServerSpec {
  return {
    name: 'ferry',
    start: async () => {
      const { child, nbdPort } = await startFerryServe(dataDir);
      return running(child, `nbd://127.0.0.1:${nbdPort}/bench`);
    },
  };
}

export function ferryDirect(imagePath: string): ServerSpec {
  return {
    name: 'ferry',
    start: async () => {
      const port = await freePort();
      const child = spawnChild(
        'ferry-direct',
        process.execPath,
        [FERRY_DIRECT, imagePath, String(port)],
        { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
      );
      await waitOrStop(child, port);
      return running(child, `nbd://127.0.0.1:${port}/bench`);
    },
  };
}

export function qemuNbd(imagePath: string): ServerSpec {
  return {
    name: 'qemu-nbd',
    start: async () => {
      const port = await freePort();
      const child = spawnChild('qemu-nbd', 'qemu-nbd', [
        '--cache=writeback',
        '-f',
        'raw',
        '--persistent',
        '--shared=8',
        '-b',
        '127.0.0.1',
        '-p',
        String(port),
        '-x',
        'bench',
        imagePath,
      ]);
      await waitOrStop(child, port);
      return running(child, `nbd://127.0.0.1:${port}/bench`);
    },
  };
}

export function nbdkit(imagePath: string): ServerSpec {
  return {
    name: 'nbdkit',
    start: async () => {
      const port = await freePort();
      const child = spawnChild('nbdkit', 'nbdkit', [
        '--exit-with-parent',
        '-f',
        '-p',
        String(port),
        '-i',
        '127.0.0.1',
        'file',
        imagePath,
      ]);
      await waitOrStop(child, port);
      // nbdkit ignores the export name.
      return running(child, `nbd://127.0.0.1:${port}/`);
    },
  };
}

async function waitOrStop(child: Child, port: number): Promise<void> {
  try {
    await waitForPort(child, port, START_TIMEOUT_MS);
  } catch (error) {
    await stopChild(child);
    throw error;
  }
}
