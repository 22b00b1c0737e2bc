import { spawn } from 'node:child_process';
import { readFile, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorCodeOf } from '../../util/errors.js';
import { type Logger, silentLogger } from '../../util/logger.js';
import { escapeOptionValue, type QemuSpec, qemuArgs } from './qemu-command-line.js';
import { QemuError, QemuErrorCode } from './qemu-errors.js';
import { QmpClient } from './qmp-client.js';

/**
 * One running QEMU, launched by us or adopted after an agent restart.
 *
 * Contract:
 * - QEMU runs daemonized: it is not our child, survives the agent, and is found again through
 *   its pid file (`attach`). So its exit is learnt from the QMP socket closing, then confirmed by
 *   polling the pid (`kill(pid, 0)`, with zombies counted as gone): `exited` resolves only when
 *   the process is gone, never merely because the socket closed.
 * - A pid is adopted only if /proc shows a QEMU whose `-qmp` names this VM's socket: a pid file
 *   left by a crash may hold a pid that the kernel has given to another process since.
 * - Every stop has a limit and a next step: powerdown → quit → SIGKILL.
 * - `release()` lets the agent go without stopping QEMU; `exited` then settles only if this
 *   object is still asked to `kill` it.
 */

export interface QemuLaunchOptions {
  /** Default `qemu-system-x86_64`, found on PATH. */
  readonly binary?: string;
  /** Limit on QEMU setting up the VM and answering on QMP. */
  readonly timeoutMs?: number;
  readonly pollIntervalMs?: number;
  readonly logger?: Logger;
}

export interface QemuAttachOptions {
  readonly pidFile: string;
  readonly qmpSocket: string;
  readonly timeoutMs?: number;
  readonly pollIntervalMs?: number;
  readonly logger?: Logger;
}

export interface QemuPowerdownOptions {
  /** How long the guest gets to power off after the ACPI request; then `quit`. */
  readonly timeoutMs: number;
  /** False for a guest that does not handle ACPI: go straight to `quit`. Default true. */
  readonly isAcpiAware?: boolean;
}

/** How a stop ended: the guest powered off, QEMU quit on request, or it was killed. */
export type QemuStopOutcome = 'guest' | 'quit' | 'killed';

export const QEMU_LAUNCH_TIMEOUT_MS_DEFAULT = 30_000;
export const QEMU_ATTACH_TIMEOUT_MS_DEFAULT = 5_000;
export const QEMU_QUIT_TIMEOUT_MS_DEFAULT = 10_000;
export const QEMU_KILL_TIMEOUT_MS_DEFAULT = 10_000;
/** How often a gone-or-not check runs once QMP has closed; bounded so exits are seen quickly. */
const POLL_INTERVAL_MS_DEFAULT = 50;
const POLL_INTERVAL_MS_MAX = 1_000;
/** QEMU's start-up output kept for error messages; the rest is dropped. */
const OUTPUT_MAX_BYTES = 16 * 1024;

export class QemuProcess {
  readonly pid: number;
  readonly qmp: QmpClient;
  readonly pidFile: string;
  readonly qmpSocket: string;
  /** Resolves when the process is gone (exited, killed, reaped or a zombie). Never rejects. */
  readonly exited: Promise<void>;
  private readonly logger: Logger;
  private readonly pollIntervalMs: number;
  private resolveExited!: () => void;
  private hasExitedNow = false;
  private isPolling = false;
  private isReleased = false;

  private constructor(pid: number, qmp: QmpClient, files: QemuFiles, options: PollOptions) {
    this.pid = pid;
    this.qmp = qmp;
    this.pidFile = files.pidFile;
    this.qmpSocket = files.qmpSocket;
    this.logger = options.logger ?? silentLogger;
    this.pollIntervalMs = Math.min(
      options.pollIntervalMs ?? POLL_INTERVAL_MS_DEFAULT,
      POLL_INTERVAL_MS_MAX,
    );
    this.exited = new Promise((resolve) => {
      this.resolveExited = resolve;
    });
    // After `release()` the socket closed because we closed it: QEMU goes on, nothing to poll.
    void qmp.closed.then(() => {
      if (!this.isReleased) this.startPolling();
    });
  }

  /**
   * Starts the VM of `spec` and resolves once QEMU answers on QMP. Rejects with
   * ERR_QEMU_LAUNCH, carrying QEMU's own stderr (bad argument, NBD server not listening, tap
   * refused, pid file locked by another QEMU), or ERR_QEMU_TIMEOUT; in both cases no QEMU of
   * this launch is left running.
   */
  static async launch(spec: QemuSpec, options: QemuLaunchOptions = {}): Promise<QemuProcess> {
    const logger = options.logger ?? silentLogger;
    const timeoutMs = options.timeoutMs ?? QEMU_LAUNCH_TIMEOUT_MS_DEFAULT;
    const startMs = performance.now();
    const binary = options.binary ?? 'qemu-system-x86_64';
    const args = qemuArgs(spec);
    const run = await runDaemonizing(binary, args, timeoutMs);
    if (run.exitCode !== 0) {
      if (run.isTimedOut) await killByPidFile(spec.pidFile, spec.qmpSocket);
      throw new QemuError(
        run.isTimedOut ? QemuErrorCode.Timeout : QemuErrorCode.LaunchFailed,
        `QEMU for VM ${spec.name} ${run.isTimedOut ? `did not start within ${timeoutMs} ms` : `failed to start (exit ${run.exitCode ?? run.signal})`}: ` +
          (run.output.trim() || 'it printed nothing; run the command by hand to see why'),
        { cause: run.error },
      );
    }
    if (run.output.trim() !== '') {
      logger.warn({ vm: spec.name, output: run.output.trim() }, 'QEMU printed while starting');
    }
    const pid = await readPid(spec.pidFile);
    if (pid === undefined) {
      throw new QemuError(
        QemuErrorCode.LaunchFailed,
        `QEMU for VM ${spec.name} started but wrote no pid to ${spec.pidFile}; check that the directory is writable`,
      );
    }
    const remainingMs = Math.max(1, timeoutMs - (performance.now() - startMs));
    let qmp: QmpClient;
    try {
      qmp = await QmpClient.connect(spec.qmpSocket, { timeoutMs: remainingMs, logger });
    } catch (error) {
      await signalIfAlive(pid, 'SIGKILL');
      throw error;
    }
    logger.info({ vm: spec.name, pid }, 'QEMU started');
    return new QemuProcess(pid, qmp, spec, options);
  }

  /**
   * SIGKILLs the QEMU that a previous agent started with these files, if it still runs (the
   * same check as `attach`: a recycled pid is left alone), without asking QMP — it may be stuck.
   * Resolves once it is gone, or after `timeoutMs`.
   */
  static async killStale(
    files: { readonly pidFile: string; readonly qmpSocket: string },
    timeoutMs = QEMU_KILL_TIMEOUT_MS_DEFAULT,
  ): Promise<void> {
    const pid = await readPid(files.pidFile);
    if (pid === undefined || !(await isQemuServing(pid, files.qmpSocket))) return;
    await signalIfAlive(pid, 'SIGKILL');
    const deadline = performance.now() + timeoutMs;
    while ((await isProcessAlive(pid)) && performance.now() < deadline) {
      await sleep(POLL_INTERVAL_MS_DEFAULT);
    }
  }

  /**
   * Finds the QEMU that a previous agent started with these files and connects to its QMP.
   * Resolves with undefined when none runs; then a stale pid file is removed. The caller makes
   * sure no launch of the same VM runs at the same time.
   */
  static async attach(options: QemuAttachOptions): Promise<QemuProcess | undefined> {
    const logger = options.logger ?? silentLogger;
    const pid = await readPid(options.pidFile);
    if (pid === undefined) return undefined;
    if (!(await isProcessAlive(pid)) || !(await isQemuServing(pid, options.qmpSocket))) {
      logger.info({ pidFile: options.pidFile, pid }, 'stale QEMU pid file removed');
      await rm(options.pidFile, { force: true });
      return undefined;
    }
    const qmp = await QmpClient.connect(options.qmpSocket, {
      timeoutMs: options.timeoutMs ?? QEMU_ATTACH_TIMEOUT_MS_DEFAULT,
      logger,
    });
    return new QemuProcess(pid, qmp, options, options);
  }

  get hasExited(): boolean {
    return this.hasExitedNow;
  }

  /** QEMU's run state (`query-status`): running, paused, prelaunch, inmigrate, postmigrate, ... */
  async status(): Promise<string> {
    const result = await this.qmp.execute<{ status: string }>('query-status');
    return result.status;
  }

  /**
   * Asks the guest to power off (ACPI), then after `timeoutMs` asks QEMU to quit, then kills it.
   * Resolves with how it ended, once the process is gone.
   */
  async powerdown(options: QemuPowerdownOptions): Promise<QemuStopOutcome> {
    if (this.hasExitedNow) return 'guest';
    if (options.isAcpiAware !== false) {
      await this.qmp.execute('system_powerdown').catch((error: unknown) => this.unlessGone(error));
      if (await this.waitExited(options.timeoutMs)) return 'guest';
    }
    return this.quit();
  }

  /**
   * Asks QEMU to quit (the guest is stopped without warning), and kills it if it is still there
   * after `timeoutMs`. Resolves once the process is gone.
   */
  async quit(timeoutMs = QEMU_QUIT_TIMEOUT_MS_DEFAULT): Promise<QemuStopOutcome> {
    if (this.hasExitedNow) return 'quit';
    // QEMU may close the socket before its reply to `quit` is read: that is success.
    await this.qmp
      .execute('quit', undefined, { timeoutMs })
      .catch((error: unknown) => this.unlessGone(error));
    this.startPolling();
    if (await this.waitExited(timeoutMs)) return 'quit';
    this.logger.warn({ pid: this.pid, timeoutMs }, 'QEMU did not quit in time; killing it');
    await this.kill();
    return 'killed';
  }

  /** SIGKILL, then waits until the process is gone; ERR_QEMU_TIMEOUT if it is not after `timeoutMs`. */
  async kill(timeoutMs = QEMU_KILL_TIMEOUT_MS_DEFAULT): Promise<void> {
    if (this.hasExitedNow) return;
    await signalIfAlive(this.pid, 'SIGKILL');
    this.startPolling();
    if (await this.waitExited(timeoutMs)) return;
    throw new QemuError(
      QemuErrorCode.Timeout,
      `QEMU pid ${this.pid} is still there ${timeoutMs} ms after SIGKILL; it is likely stuck in the ` +
        'kernel (uninterruptible I/O): check `cat /proc/PID/stack`',
    );
  }

  /** Closes our QMP connection and leaves QEMU running (the agent stops; the VM does not). */
  async release(): Promise<void> {
    this.isReleased = true;
    await this.qmp.close();
  }

  /** True when the process was gone within `timeoutMs`. */
  private async waitExited(timeoutMs: number): Promise<boolean> {
    const timeout = new AbortController();
    const timer = sleep(timeoutMs, false, { signal: timeout.signal }).catch(() => false);
    const isGone = await Promise.race([this.exited.then(() => true), timer]);
    timeout.abort();
    return isGone;
  }

  private unlessGone(error: unknown): void {
    if (errorCodeOf(error) === QemuErrorCode.QmpClosed) return;
    throw error;
  }

  /** Polls until the process is gone; started by QMP closing, or by `quit` and `kill`. */
  private startPolling(): void {
    if (this.isPolling) return;
    this.isPolling = true;
    void this.pollUntilGone();
  }

  private async pollUntilGone(): Promise<void> {
    for (;;) {
      if (!(await isProcessAlive(this.pid))) {
        this.hasExitedNow = true;
        this.resolveExited();
        return;
      }
      await sleep(this.pollIntervalMs);
    }
  }
}

interface QemuFiles {
  readonly pidFile: string;
  readonly qmpSocket: string;
}

interface PollOptions {
  readonly pollIntervalMs?: number;
  readonly logger?: Logger;
}

interface DaemonizingRun {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly output: string;
  readonly isTimedOut: boolean;
  readonly error?: Error;
}

/**
 * Runs QEMU with `-daemonize` and resolves when its first process has exited and its stdout
 * and stderr are closed: the daemon points its stdio at /dev/null just before it tells the
 * first process that the VM is set up (os-posix.c, os_setup_post), so the output read here is
 * everything QEMU printed while starting, including errors of the daemon's own set-up.
 */
function runDaemonizing(
  binary: string,
  args: string[],
  timeoutMs: number,
): Promise<DaemonizingRun> {
  return new Promise((resolve) => {
    const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let outputBytes = 0;
    const keep = (chunk: Buffer): void => {
      if (outputBytes >= OUTPUT_MAX_BYTES) return;
      chunks.push(chunk.subarray(0, OUTPUT_MAX_BYTES - outputBytes));
      outputBytes += chunk.length;
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    let isTimedOut = false;
    let spawnError: Error | undefined;
    const timer = setTimeout(() => {
      isTimedOut = true;
      child.kill('SIGKILL');
      // The daemon may hold our pipes open: stop reading so 'close' can come.
      child.stdout.destroy();
      child.stderr.destroy();
    }, timeoutMs);
    child.once('error', (error) => {
      spawnError = error;
    });
    child.once('close', (exitCode, signal) => {
      clearTimeout(timer);
      const output = Buffer.concat(chunks).toString('utf8');
      const run = {
        exitCode: spawnError === undefined ? exitCode : -1,
        signal,
        output,
        isTimedOut,
      };
      resolve(
        spawnError === undefined
          ? run
          : { ...run, output: output || spawnError.message, error: spawnError },
      );
    });
  });
}

/** After a launch that timed out: the daemon may have written its pid before it got stuck. */
async function killByPidFile(pidFile: string, qmpSocket: string): Promise<void> {
  const pid = await readPid(pidFile);
  if (pid !== undefined && (await isQemuServing(pid, qmpSocket)))
    await signalIfAlive(pid, 'SIGKILL');
}

async function readPid(pidFile: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(pidFile, 'utf8');
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT') return undefined;
    throw error;
  }
  const pid = Number.parseInt(text.trim(), 10);
  return Number.isSafeInteger(pid) && pid > 1 ? pid : undefined;
}

async function signalIfAlive(pid: number, signal: NodeJS.Signals): Promise<void> {
  try {
    process.kill(pid, signal);
  } catch (error) {
    if (errorCodeOf(error) !== 'ESRCH') throw error;
  }
}

/**
 * True while `pid` exists and is not a zombie: a daemonized QEMU is reaped by whoever adopted
 * it, perhaps late, and a zombie has already closed everything.
 */
async function isProcessAlive(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch (error) {
    if (errorCodeOf(error) === 'ESRCH') return false;
    if (errorCodeOf(error) !== 'EPERM') throw error;
  }
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Field 3, after "pid (comm) ": comm may hold spaces and parentheses, so cut at the last ')'.
    const state = stat.charAt(stat.lastIndexOf(')') + 2);
    return state !== 'Z' && state !== 'X';
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT') return false;
    throw error;
  }
}

/** True when `pid` runs a QEMU binary whose `-qmp` is the Unix socket `qmpSocket`. */
async function isQemuServing(pid: number, qmpSocket: string): Promise<boolean> {
  let argv: string[];
  try {
    argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT') return false;
    throw error;
  }
  if (!basename(argv[0] ?? '').includes('qemu')) return false;
  const qmpIndex = argv.indexOf('-qmp');
  const value = qmpIndex < 0 ? undefined : argv[qmpIndex + 1];
  const expected = `unix:${escapeOptionValue(qmpSocket)}`;
  if (value === undefined) return false;
  // The path ends at the first single comma: `,,` is an escaped comma still inside it.
  return (
    value === expected ||
    (value.startsWith(`${expected},`) && value.charAt(expected.length + 1) !== ',')
  );
}
