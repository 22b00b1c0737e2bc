import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Child, spawnChild, stopChild } from './children.js';
import { parseFioReport } from './fio-job.js';
import { pause, step } from './migrate-step.js';

/**
 * The guest of the benchmark under load: fio, 4 KiB random writes at queue depth 16 through the
 * disk's NBD export, running until told to stop (SIGINT: fio then ends the job cleanly and writes
 * its report and logs). fio logs, per 100 ms window and stamped with the Unix time in ms (the same
 * clock as Date.now() here), the IOPS and the largest latency of the window, so the windows can be
 * cut at the migration's start, end and switchover.
 */
export interface LoadSpec {
  readonly uri: string;
  /** fio writes over [0, sizeBytes). */
  readonly sizeBytes: number;
  /** IOPS fio issues at most; 0: as fast as it can. */
  readonly rateIops: number;
  /** Where fio's report and logs go. */
  readonly dir: string;
  /** Names the log files; unique per run. */
  readonly label: string;
  /** fio stops by itself after this long, should no one stop it. */
  readonly runtimeMaxSeconds: number;
}

/** One window of a fio log: its end (Unix ms) and its value. */
export interface LogSample {
  readonly atMs: number;
  readonly value: number;
}

export interface LoadTrace {
  readonly iops: readonly LogSample[];
  /** The largest latency (submission to completion) of each window, in ms. */
  readonly latencyMaxMs: readonly LogSample[];
}

interface RunningLoad {
  /** Rejects if fio has already exited: it died, as it must run until stopped. */
  checkRunning(): void;
  /** Stops fio and reads its report and logs. */
  stop(): Promise<LoadTrace>;
}

export const LOAD_WINDOW_MS = 100;
/** fio's queue depth: the writes it keeps in flight. */
export const LOAD_IODEPTH = 16;
const STOP_TIMEOUT_MS = 30_000;
const SIGINT_EXIT = 128;

function startLoad(spec: LoadSpec): RunningLoad {
  const prefix = join(spec.dir, spec.label);
  const reportPath = `${prefix}.json`;
  const args = [
    '--name=guest',
    '--ioengine=nbd',
    `--uri=${spec.uri}`,
    '--rw=randwrite',
    '--bs=4k',
    `--iodepth=${LOAD_IODEPTH}`,
    `--size=${spec.sizeBytes}`,
    '--time_based=1',
    `--runtime=${spec.runtimeMaxSeconds}`,
    '--norandommap=1',
    '--randrepeat=0',
    '--output-format=json',
    `--output=${reportPath}`,
    `--write_iops_log=${prefix}`,
    `--write_lat_log=${prefix}`,
    `--log_avg_msec=${LOAD_WINDOW_MS}`,
    // With log_avg_msec, the latency logs hold each window's largest value, not its mean.
    '--log_max_value=1',
    '--log_unix_epoch=1',
    ...(spec.rateIops > 0 ? [`--rate_iops=${spec.rateIops}`] : []),
  ];
  const child = spawnChild(`fio ${spec.label}`, 'fio', args);
  return {
    checkRunning: () => {
      if (child.process.exitCode !== null || child.process.signalCode !== null) {
        throw new Error(`fio ${spec.label} exited early:\n${child.output()}`);
      }
    },
    stop: () => stopLoad(child, spec, prefix, reportPath),
  };
}

async function stopLoad(
  child: Child,
  spec: LoadSpec,
  prefix: string,
  reportPath: string,
): Promise<LoadTrace> {
  const status = await step(`stopping fio ${spec.label}`, STOP_TIMEOUT_MS, async () => {
    if (child.process.exitCode === null && child.process.signalCode === null) {
      child.process.kill('SIGINT');
    }
    return child.exited;
  }).catch(async (error: unknown) => {
    await stopChild(child);
    throw error;
  });
  // fio 3.x exits 128 after SIGINT even when the job ended cleanly: the report's error says.
  if (status !== 0 && status !== SIGINT_EXIT) {
    throw new Error(`fio ${spec.label} ended with ${status}:\n${child.output()}`);
  }
  // A guest write that failed (the export dropped, an EIO) fails the run here.
  parseFioReport(await readFile(reportPath, 'utf8'), `fio ${spec.label}`);
  return {
    iops: await readLog(`${prefix}_iops.1.log`, 1),
    latencyMaxMs: await readLog(`${prefix}_lat.1.log`, 1e-6),
  };
}

/** Reads a fio log ("time, value, direction, block size, offset" per line), scaling the value. */
export async function readLog(path: string, scale: number): Promise<LogSample[]> {
  const text = await readFile(path, 'utf8');
  const samples: LogSample[] = [];
  for (const line of text.split('\n')) {
    const [time, value] = line.split(',');
    if (time === undefined || value === undefined) continue;
    samples.push({ atMs: Number(time), value: Number(value) * scale });
  }
  return samples;
}

/**
 * Runs `work` (a migration) under load: starts fio, lets it run `baselineMs` alone, runs `work`,
 * lets fio run `tailMs` more (the guest after the switchover), then stops it. fio is stopped
 * whatever happens.
 */
export async function withLoad<T>(
  spec: LoadSpec,
  timing: { readonly baselineMs: number; readonly tailMs: number },
  stop: AbortSignal,
  work: () => Promise<T>,
): Promise<{ readonly trace: LoadTrace; readonly value: T }> {
  const load = startLoad(spec);
  let value: T;
  try {
    await pause(timing.baselineMs, stop);
    load.checkRunning();
    value = await work();
    await pause(timing.tailMs, stop);
    load.checkRunning();
  } catch (error) {
    await load.stop().catch(() => undefined);
    throw error;
  }
  return { trace: await load.stop(), value };
}

/** When the migration ran, and when the guest was held (or stalled) at its end. */
export interface MigrationWindow {
  readonly startMs: number;
  readonly endMs: number;
  /** The switchover (Ferry) or pivot (QEMU): from when it may begin to when it surely ended. */
  readonly switchFromMs: number;
  readonly switchToMs: number;
}

export interface GuestImpact {
  /** Mean IOPS before the migration (after fio's first second) and while it ran. */
  readonly iopsBefore: number;
  readonly iopsDuring: number;
  /** The largest write latency before, during, and around the switchover, in ms. */
  readonly latencyMaxBeforeMs: number;
  readonly latencyMaxDuringMs: number;
  readonly latencyMaxAtSwitchMs: number;
}

/** A request held at the switchover completes, and is logged, just after the guest is released. */
const SWITCH_MARGIN_MS = 300;
/** fio's first second: connecting, filling the queue. */
export const WARMUP_MS = 1000;

export function guestImpact(trace: LoadTrace, window: MigrationWindow): GuestImpact {
  const warmEndMs = firstWindowMs(trace) + WARMUP_MS;
  return {
    iopsBefore: meanOver(trace.iops, warmEndMs, window.startMs),
    iopsDuring: meanOver(trace.iops, window.startMs + LOAD_WINDOW_MS, window.endMs),
    latencyMaxBeforeMs: maxOver(trace.latencyMaxMs, warmEndMs, window.startMs),
    latencyMaxDuringMs: maxOver(
      trace.latencyMaxMs,
      window.startMs,
      window.endMs + SWITCH_MARGIN_MS,
    ),
    latencyMaxAtSwitchMs: maxOver(
      trace.latencyMaxMs,
      window.switchFromMs - SWITCH_MARGIN_MS,
      window.switchToMs + SWITCH_MARGIN_MS,
    ),
  };
}

/** The mean of the windows that end within [fromMs, toMs]; NaN if none does. */
function meanOver(samples: readonly LogSample[], fromMs: number, toMs: number): number {
  const inside = samples.filter((s) => s.atMs >= fromMs && s.atMs <= toMs);
  if (inside.length === 0) return Number.NaN;
  return inside.reduce((sum, s) => sum + s.value, 0) / inside.length;
}

/** The largest value of the windows that end within [fromMs, toMs]; NaN if none does. */
function maxOver(samples: readonly LogSample[], fromMs: number, toMs: number): number {
  const inside = samples.filter((s) => s.atMs >= fromMs && s.atMs <= toMs);
  if (inside.length === 0) return Number.NaN;
  return Math.max(...inside.map((s) => s.value));
}

/** When the first window ended: fio's start, as far as the logs tell. */
function firstWindowMs(trace: LoadTrace): number {
  return trace.iops[0]?.atMs ?? Number.NaN;
}
