import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants, createReadStream } from 'node:fs';
import { delimiter, join } from 'node:path';
import { test } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import type { ExportProvider, NbdExport } from '../../src/nbd/exports.js';

/**
 * Shared pieces of the interop tests: running real NBD tools as child processes with a time
 * limit, finding them on PATH, and the CI rule for a missing tool (STYLE.md "Tests": outside CI
 * a missing tool skips with a reason; with CI=true it fails).
 */

export const MiB = 1024 * 1024;

export const isCi = process.env.CI === 'true';

/** Debian package that provides each tool, for the skip and failure messages. */
const PACKAGE_OF: Record<string, string> = {
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  'qemu-nbd': 'qemu-utils',
  nbdinfo: 'libnbd-bin',
  nbdcopy: 'libnbd-bin',
  fio: 'fio',
  nbdkit: 'nbdkit',
  certtool: 'gnutls-bin',
};

/** True when an executable `name` is on PATH (what `command -v` answers, without a shell). */
export function hasTool(name: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      // Not in this directory: try the next one.
    }
  }
  return false;
}

function missingReason(missing: readonly string[]): string {
  const packages = [...new Set(missing.map((tool) => PACKAGE_OF[tool] ?? tool))];
  return `${missing.join(', ')} not installed (apt-get install ${packages.join(' ')})`;
}

/**
 * `test()` for a case that needs real tools. Outside CI a missing tool skips it with the reason;
 * in CI the case runs and fails at once, naming what is missing.
 */
export function toolTest(name: string, tools: readonly string[], body: () => Promise<void>): void {
  const missing = tools.filter((tool) => !hasTool(tool));
  if (missing.length > 0 && !isCi) {
    test(name, { skip: missingReason(missing) }, () => undefined);
    return;
  }
  test(name, async () => {
    if (missing.length > 0) {
      throw new Error(`${missingReason(missing)}; CI=true, so interop tests may not skip`);
    }
    await body();
  });
}

export interface ToolResult {
  /** The exit status; a tool killed by a signal or the time limit rejects instead. */
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export interface RunOptions {
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  /** Where the tool runs; fio, for one, may leave state files in its working directory. */
  readonly cwd?: string;
}

const OUTPUT_BYTES_MAX = 16 * MiB;

/**
 * Runs `file args...` and resolves with its exit status and output, whatever the status. Rejects
 * if it cannot start, is killed (the time limit sends SIGKILL), or prints more than 16 MiB.
 */
export function runTool(
  file: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<ToolResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    execFile(
      file,
      args,
      {
        timeout: timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: OUTPUT_BYTES_MAX,
        encoding: 'utf8',
        ...(options.env === undefined ? {} : { env: options.env }),
        ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
      },
      (error, stdout, stderr) => {
        if (error === null) return resolve({ code: 0, stdout, stderr });
        if (typeof error.code === 'number' && error.signal == null && !error.killed) {
          return resolve({ code: error.code, stdout, stderr });
        }
        const why = error.killed ? `killed after ${timeoutMs} ms` : error.message;
        reject(
          new Error(`${file} ${args.join(' ')}: ${why}\n${stdout}\n${stderr}`, { cause: error }),
        );
      },
    );
  });
}

/** Runs a tool that must succeed; the rejection carries the command line and its output. */
export async function runOk(
  file: string,
  args: readonly string[],
  options: RunOptions = {},
): Promise<ToolResult> {
  const result = await runTool(file, args, options);
  if (result.code !== 0) {
    throw new Error(
      `${file} ${args.join(' ')} exited ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`,
    );
  }
  return result;
}

/** SHA-256 of a whole file, streamed. */
export async function hashFile(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

export function hashBuffer(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * A fixed table of exports that also counts lookups per name: each connection that opens an
 * export asks once (NBD_OPT_GO), so the count proves how many connections a tool made.
 */
export class CountingExports implements ExportProvider {
  private readonly table = new Map<string, NbdExport>();
  private readonly lookups = new Map<string, number>();

  add(name: string, description: string, device: BlockDevice): void {
    this.table.set(name, { name, description, device });
  }

  lookup(name: string): NbdExport | undefined {
    this.lookups.set(name, (this.lookups.get(name) ?? 0) + 1);
    return this.table.get(name);
  }

  list(): readonly NbdExport[] {
    return [...this.table.values()];
  }

  lookupCount(name: string): number {
    return this.lookups.get(name) ?? 0;
  }

  devices(): BlockDevice[] {
    return [...this.table.values()].map((entry) => entry.device);
  }
}

/** One line of `nbdinfo --map --json`. */
export interface MapEntry {
  readonly offset: number;
  readonly length: number;
  /** base:allocation flags: 1 hole, 2 zero. */
  readonly type: number;
}

/** The data runs of a map, adjacent runs merged, as [offset, end) pairs. */
export function dataRuns(entries: readonly MapEntry[]): [number, number][] {
  const runs: [number, number][] = [];
  for (const entry of entries) {
    if ((entry.type & 1) !== 0) continue;
    const last = runs[runs.length - 1];
    if (last !== undefined && last[1] === entry.offset) last[1] = entry.offset + entry.length;
    else runs.push([entry.offset, entry.offset + entry.length]);
  }
  return runs;
}
