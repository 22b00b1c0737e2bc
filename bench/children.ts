import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { rm } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * The bench's child processes: every one is recorded at spawn and killed when the bench ends, on
 * success, on failure and on SIGINT/SIGTERM, so no server outlives a run. Each keeps the last
 * 64 KiB of its output for the error message when it dies early.
 */

const OUTPUT_TAIL_BYTES = 64 * 1024;
const STOP_GRACE_MS = 10_000;

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  /** Resolves with the exit code (or the signal's name) once the process has exited. */
  readonly exited: Promise<number | string>;
  /** The tail of stdout and stderr together. */
  output(): string;
}

const live = new Set<Child>();

/**
 * Starts `file` and records it. With `hasIpc` the child (a Node script) also gets Node's IPC
 * channel, for `child.process.send` and `process.on('message')` on its side.
 */
export function spawnChild(
  name: string,
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv = process.env,
  hasIpc = false,
): Child {
  const stdio = hasIpc
    ? (['ignore', 'pipe', 'pipe', 'ipc'] as const)
    : (['ignore', 'pipe', 'pipe'] as const);
  const child = spawn(file, args, { stdio: [...stdio], env });
  let tail = '';
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString('utf8')).slice(-OUTPUT_TAIL_BYTES);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  const exited = new Promise<number | string>((resolve) => {
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
    child.once('error', (error) => {
      keep(Buffer.from(`\n${name}: ${error.message}\n`));
      resolve(`error: ${error.message}`);
    });
  });
  const handle: Child = { name, process: child, exited, output: () => tail };
  live.add(handle);
  void exited.then(() => live.delete(handle));
  return handle;
}

/** SIGTERM, then SIGKILL if it has not exited within the grace period; resolves once it is gone. */
export async function stopChild(child: Child): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return;
  child.process.kill('SIGTERM');
  const timer = setTimeout(() => child.process.kill('SIGKILL'), STOP_GRACE_MS);
  await child.exited;
  clearTimeout(timer);
}

export async function stopAll(): Promise<void> {
  await Promise.all([...live].map((child) => stopChild(child)));
}

/**
 * Kills whatever is left when the process exits for any reason. SIGINT/SIGTERM stop every child
 * and abort the returned signal, so the bench unwinds through its cleanup; a second one exits at
 * once. Call once at start.
 */
export function killChildrenOnExit(): AbortSignal {
  const controller = new AbortController();
  process.once('exit', () => {
    for (const child of live) child.process.kill('SIGKILL');
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (controller.signal.aborted) process.exit(130);
      process.stderr.write(`\nbench: ${signal}, stopping the servers\n`);
      controller.abort(new Error(`stopped by ${signal}`));
      void stopAll();
    });
  }
  return controller.signal;
}

/** True when an executable `name` is on PATH. */
export function hasTool(name: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => {
    if (dir === '') return false;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/** A TCP port that was free a moment ago on 127.0.0.1 (the kernel picked it). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      server.close(() => {
        if (address === null || typeof address === 'string') reject(new Error('no port'));
        else resolve(address.port);
      });
    });
  });
}

/** Resolves once 127.0.0.1:`port` accepts a connection; fails if `child` exits first or time runs out. */
export async function waitForPort(child: Child, port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let hasExited = false;
  void child.exited.then(() => {
    hasExited = true;
  });
  while (Date.now() < deadline) {
    if (hasExited) {
      throw new Error(`${child.name} exited before listening:\n${child.output()}`);
    }
    if (await canConnect(port)) return;
    await sleep(50);
  }
  throw new Error(
    `${child.name} did not listen on port ${port} within ${timeoutMs} ms:\n${child.output()}`,
  );
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Runs a command to completion, collecting its output; rejects on a non-zero exit or timeout. */
export async function runCommand(
  name: string,
  file: string,
  args: readonly string[],
  options: { timeoutMs: number; env?: NodeJS.ProcessEnv; cwd?: string },
): Promise<string> {
  const child = spawn(file, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: options.env ?? process.env,
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
  });
  const handle: Child = {
    name,
    process: child,
    exited: new Promise((resolve) => {
      child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown'));
      child.once('error', (error) => resolve(`error: ${error.message}`));
    }),
    output: () => `${stdout}\n${stderr}`,
  };
  live.add(handle);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString('utf8');
  });
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-OUTPUT_TAIL_BYTES);
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
  const status = await handle.exited;
  clearTimeout(timer);
  live.delete(handle);
  if (status !== 0) {
    throw new Error(`${name} (${file} ${args.join(' ')}) ended with ${status}:\n${stderr}`);
  }
  return stdout;
}

/**
 * Runs a bench's body with its scratch directory `dir`. After a signal (`stop` fired) the
 * children's deaths are its consequence, not the news: exit code 130 and the signal's reason.
 * Whatever happens, every child is stopped and `dir` removed unless `isKeep`.
 */
export async function inBenchDir(
  dir: string,
  isKeep: boolean,
  stop: AbortSignal,
  body: () => Promise<void>,
): Promise<void> {
  try {
    await body();
  } catch (error) {
    if (!stop.aborted) throw error;
    process.exitCode = 130;
    throw stop.reason;
  } finally {
    await stopAll();
    if (isKeep) process.stderr.write(`bench: kept ${dir}\n`);
    else await rm(dir, { recursive: true, force: true });
  }
}

/** Runs a bench's `main`; a failure is printed with its stack and exits 1 (unless set already). */
export function runBenchMain(main: () => Promise<void>): void {
  main().catch((error: unknown) => {
    process.stderr.write(
      `bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    );
    process.exitCode ??= 1;
  });
}
