import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * Runs the real `ferry` command (bin/ferry.js over dist/) as child processes: one-shot commands,
 * and `ferry serve` on port 0, found through its "ready" log line.
 */
export const FERRY_BIN = fileURLToPath(new URL('../../../bin/ferry.js', import.meta.url));

export interface CommandResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

export function runFerry(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<CommandResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [FERRY_BIN, ...args],
      { env: { ...process.env, ...env }, timeout: 10_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The fields of serve's "ready" line that tests use. */
export interface ReadyLine {
  readonly nbdUrl: string;
  readonly nbdPort: number;
  readonly apiUrl: string;
  readonly apiPort: number;
}

export interface ServeProcess {
  readonly child: ChildProcess;
  readonly ready: ReadyLine;
  /** Every stderr line so far (JSON log lines). */
  readonly logLines: string[];
  /** Resolves with the exit code once the process has exited (null when a signal killed it). */
  readonly exited: Promise<number | null>;
}

/**
 * Spawns `ferry serve` and resolves once it logs "ready"; rejects if it exits first. `env` adds
 * to the environment (e.g. FERRY_CRASH_AT for the crash tests).
 */
export async function startServe(
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<ServeProcess> {
  const child = spawn(process.execPath, [FERRY_BIN, 'serve', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const logLines: string[] = [];
  const lines = createInterface({ input: child.stderr! });
  const ready = await new Promise<ReadyLine>((resolve, reject) => {
    lines.on('line', (line) => {
      logLines.push(line);
      const record = parseJson(line);
      if (record?.msg === 'ready') resolve(record as unknown as ReadyLine);
    });
    void exited.then((code) =>
      reject(new Error(`ferry serve exited with ${code}:\n${logLines.join('\n')}`)),
    );
  });
  return { child, ready, logLines, exited };
}

function parseJson(line: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
}
