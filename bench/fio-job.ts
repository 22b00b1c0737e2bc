import { runCommand } from './children.js';

/**
 * The fio workloads of the serving benchmark, run with fio's nbd engine (libnbd inside fio, one
 * connection per job), and the numbers taken from fio's JSON report.
 */
export interface FioJob {
  readonly name: string;
  readonly rw: 'randread' | 'randwrite' | 'read' | 'write';
  readonly blockBytes: number;
  readonly iodepth: number;
}

export const FIO_JOBS: readonly FioJob[] = [
  { name: 'randread 4k qd32', rw: 'randread', blockBytes: 4096, iodepth: 32 },
  { name: 'randwrite 4k qd32', rw: 'randwrite', blockBytes: 4096, iodepth: 32 },
  { name: 'read 1M qd8', rw: 'read', blockBytes: 1024 * 1024, iodepth: 8 },
  { name: 'write 1M qd8', rw: 'write', blockBytes: 1024 * 1024, iodepth: 8 },
];

export interface FioResult {
  readonly iops: number;
  readonly bytesPerSecond: number;
  readonly latencyMeanUs: number;
}

export interface FioDirection {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  lat_ns: { mean: number; max: number };
}

export interface FioJobReport {
  error: number;
  read: FioDirection;
  write: FioDirection;
}

interface FioReport {
  jobs: FioJobReport[];
}

/** Runs `job` for `seconds` against `uri` over the first `sizeBytes` of the export. */
export async function runFio(
  job: FioJob,
  uri: string,
  seconds: number,
  sizeBytes: number,
  cwd: string,
): Promise<FioResult> {
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.blockBytes}`,
    `--iodepth=${job.iodepth}`,
    `--size=${sizeBytes}`,
    '--time_based=1',
    `--runtime=${seconds}`,
    '--norandommap=1',
    '--randrepeat=0',
    '--output-format=json',
  ];
  const stdout = await runCommand('fio', 'fio', args, { timeoutMs: (seconds + 60) * 1000, cwd });
  const only = parseFioReport(stdout, `fio ${job.name} on ${uri}`);
  const side = job.rw === 'randread' || job.rw === 'read' ? only.read : only.write;
  return { iops: side.iops, bytesPerSecond: side.bw_bytes, latencyMeanUs: side.lat_ns.mean / 1000 };
}

/**
 * The first job of fio's JSON report; throws, naming `what`, if fio reported an error for it.
 * Whatever fio prints before the document is skipped: the nbd engine's "fio: connected to NBD
 * server", or "fio: terminating on signal 2" when it was stopped with SIGINT.
 */
export function parseFioReport(text: string, what: string): FioJobReport {
  const start = text.indexOf('{');
  if (start < 0) throw new Error(`${what}: no JSON report in fio's output:\n${text.slice(-2000)}`);
  const report = JSON.parse(text.slice(start)) as FioReport;
  const only = report.jobs[0];
  if (only === undefined || only.error !== 0) {
    throw new Error(`${what} failed: fio error ${JSON.stringify(only?.error)}`);
  }
  return only;
}
