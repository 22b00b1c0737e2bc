import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Child, runCommand, spawnChild, stopChild } from './children.js';
import { parseFioReport } from './fio-job.js';
import { type LogSample, readLog } from './migrate-load.js';
import { step } from './migrate-step.js';

/**
 * A guest that proves it was served and lost nothing: fio's nbd engine writes every 4 KiB block
 * of its region exactly once (random order, random map on, fixed size, not time-based), each
 * with a crc32c verify header, at a fixed rate so it keeps writing while the disks move. After
 * it ends, a `--verify_only` pass with the same seed reads every block back and checks it: with
 * each block written once, a lost or misplaced write fails it (DESIGN.md, "How we know it works").
 * fio logs its IOPS per `LOG_WINDOW_MS` window, stamped with Unix ms (Date.now()'s clock).
 */
export interface GuestSpec {
  readonly uri: string;
  /** fio writes [0, regionBytes), a multiple of 4 KiB. */
  readonly regionBytes: number;
  readonly rateIops: number;
  /** Where fio's report and log go; `label` names them. */
  readonly dir: string;
  readonly label: string;
}

export interface RunningGuest {
  /** Resolves with the IOPS log once fio wrote every block; rejects if fio failed. */
  readonly finished: Promise<readonly LogSample[]>;
  stop(): Promise<void>;
}

export const GUEST_BLOCK_BYTES = 4096;
const LOG_WINDOW_MS = 500;
const VERIFY_TIMEOUT_MS = 120_000;

function fioArgs(spec: GuestSpec): string[] {
  return [
    '--name=guest',
    '--ioengine=nbd',
    `--uri=${spec.uri}`,
    '--rw=randwrite',
    `--bs=${GUEST_BLOCK_BYTES}`,
    '--iodepth=4',
    `--size=${spec.regionBytes}`,
    '--verify=crc32c',
    // No verify state file in the bench's working directory: the whole region is checked.
    '--verify_state_save=0',
    '--randrepeat=1',
    '--output-format=json',
  ];
}

export function startGuest(spec: GuestSpec): RunningGuest {
  const prefix = join(spec.dir, spec.label);
  const reportPath = `${prefix}.json`;
  const child = spawnChild(`fio ${spec.label}`, 'fio', [
    ...fioArgs(spec),
    '--do_verify=0',
    `--rate_iops=${spec.rateIops}`,
    `--output=${reportPath}`,
    `--write_iops_log=${prefix}`,
    `--log_avg_msec=${LOG_WINDOW_MS}`,
    '--log_unix_epoch=1',
  ]);
  return {
    finished: finish(child, spec, prefix, reportPath),
    stop: () => stopChild(child),
  };
}

async function finish(
  child: Child,
  spec: GuestSpec,
  prefix: string,
  reportPath: string,
): Promise<readonly LogSample[]> {
  const status = await child.exited;
  if (status !== 0) throw new Error(`fio ${spec.label} ended with ${status}:\n${child.output()}`);
  // A write that failed (the export dropped, an EIO) fails here.
  parseFioReport(await readFile(reportPath, 'utf8'), `fio ${spec.label}`);
  return readLog(`${prefix}_iops.1.log`, 1);
}

/** Reads back every block the guest wrote; throws with fio's complaint if one is wrong. */
export async function verifyGuest(spec: GuestSpec): Promise<void> {
  const what = `fio --verify_only ${spec.label}`;
  const stdout = await step(what, VERIFY_TIMEOUT_MS, () =>
    runCommand(what, 'fio', [...fioArgs(spec), '--verify_only=1'], {
      timeoutMs: VERIFY_TIMEOUT_MS,
    }),
  );
  parseFioReport(stdout, what);
}

/** Mean IOPS of the windows ending within [fromMs, toMs]; NaN if none does. */
export function meanIops(samples: readonly LogSample[], fromMs: number, toMs: number): number {
  const inside = samples.filter((s) => s.atMs > fromMs && s.atMs <= toMs);
  if (inside.length === 0) return Number.NaN;
  return inside.reduce((sum, s) => sum + s.value, 0) / inside.length;
}
