import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/util/size.js';
import { hasTool, inBenchDir, killChildrenOnExit, runBenchMain } from './children.js';
import { FIO_JOBS, type FioResult, runFio } from './fio-job.js';
import { writeImage } from './image-file.js';
import {
  type FerryMode,
  ferryDirect,
  ferryProduct,
  importIntoFerry,
  isFerryProductBuilt,
  nbdkit,
  qemuNbd,
  type ServerName,
  type ServerSpec,
} from './servers.js';

/**
 * Serving benchmark (DESIGN.md, "Benchmarks"): fio's nbd engine against Ferry, qemu-nbd and
 * nbdkit over the same fully written raw image, in the same run, with ratios. Servers are
 * interleaved within each run, and the order rotates from run to run, so drift in the machine
 * (page cache, thermal, neighbours) hits all of them alike. Medians over runs are reported.
 *
 *   npm run bench -- [--size 1G] [--runs 3] [--seconds 10] [--ferry auto|product|direct]
 *                    [--skip-ferry] [--skip-qemu-nbd] [--skip-nbdkit] [--dir DIR] [--json FILE]
 *                    [--keep]
 */

const USAGE = `usage: node dist/bench/nbd-serve.js [options]
  --size SIZE        image size (default 1G)
  --runs N           runs; each runs every server once (default 3)
  --seconds N        seconds per fio job (default 10)
  --ferry MODE       auto (default): the product if built; product: ferry serve + disk import;
                     direct: the NBD server over the raw backend alone (bench/ferry-direct.ts)
  --skip-ferry, --skip-qemu-nbd, --skip-nbdkit
  --dir DIR          where the temporary directory goes (default: the OS temp dir)
  --json FILE        also write samples and medians as JSON
  --keep             keep the temporary directory (image, ferry data dir)`;

interface Options {
  sizeBytes: number;
  runs: number;
  seconds: number;
  ferryMode: FerryMode;
  skip: Set<ServerName>;
  parentDir: string;
  jsonPath: string | undefined;
  isKeep: boolean;
}

interface Sample {
  readonly run: number;
  readonly server: ServerName;
  readonly job: string;
  readonly result: FioResult;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      size: { type: 'string', default: '1G' },
      runs: { type: 'string', default: '3' },
      seconds: { type: 'string', default: '10' },
      ferry: { type: 'string', default: 'auto' },
      'skip-ferry': { type: 'boolean', default: false },
      'skip-qemu-nbd': { type: 'boolean', default: false },
      'skip-nbdkit': { type: 'boolean', default: false },
      dir: { type: 'string', default: tmpdir() },
      json: { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const positive = (text: string, what: string): number => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value <= 0)
      throw new Error(`--${what} must be a positive integer`);
    return value;
  };
  const mode = values.ferry;
  if (mode !== 'auto' && mode !== 'product' && mode !== 'direct') {
    throw new Error('--ferry must be auto, product or direct');
  }
  const skip = new Set<ServerName>();
  if (values['skip-ferry']) skip.add('ferry');
  if (values['skip-qemu-nbd']) skip.add('qemu-nbd');
  if (values['skip-nbdkit']) skip.add('nbdkit');
  return {
    sizeBytes: parseSize(values.size),
    runs: positive(values.runs, 'runs'),
    seconds: positive(values.seconds, 'seconds'),
    ferryMode: mode === 'auto' ? (isFerryProductBuilt() ? 'product' : 'direct') : mode,
    skip,
    parentDir: values.dir,
    jsonPath: values.json,
    isKeep: values.keep,
  };
}

function checkTools(options: Options): void {
  const needed = ['fio'];
  if (!options.skip.has('qemu-nbd')) needed.push('qemu-nbd');
  if (!options.skip.has('nbdkit')) needed.push('nbdkit');
  const missing = needed.filter((tool) => !hasTool(tool));
  if (missing.length > 0) {
    throw new Error(
      `missing ${missing.join(', ')}: apt-get install fio qemu-utils nbdkit (or --skip-...)`,
    );
  }
}

async function prepareServers(
  options: Options,
  dir: string,
  stop: AbortSignal,
): Promise<ServerSpec[]> {
  let imagePath = join(dir, 'bench.raw');
  const started = Date.now();
  await writeImage(imagePath, options.sizeBytes, stop);
  log(
    `wrote ${formatSize(options.sizeBytes)} image in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
  const servers: ServerSpec[] = [];
  if (!options.skip.has('ferry')) {
    if (options.ferryMode === 'product') {
      const dataDir = join(dir, 'ferry-data');
      await mkdir(dataDir);
      stop.throwIfAborted();
      imagePath = await importIntoFerry(dataDir, imagePath);
      log(`ferry: the product (ferry serve, disk imported as "bench": ${imagePath})`);
      servers.push(ferryProduct(dataDir));
    } else {
      log('ferry: direct (NbdServer over openRawFile, no agent or filters: bench/ferry-direct.ts)');
      servers.push(ferryDirect(imagePath));
    }
  }
  if (!options.skip.has('qemu-nbd')) servers.push(qemuNbd(imagePath));
  if (!options.skip.has('nbdkit')) servers.push(nbdkit(imagePath));
  if (servers.length === 0) throw new Error('every server is skipped');
  return servers;
}

async function runAll(
  options: Options,
  servers: ServerSpec[],
  dir: string,
  stop: AbortSignal,
): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (let run = 1; run <= options.runs; run += 1) {
    // Rotate the order so no server always goes first (cold) or last.
    const shift = (run - 1) % servers.length;
    const order = [...servers.slice(shift), ...servers.slice(0, shift)];
    for (const spec of order) {
      stop.throwIfAborted();
      const server = await spec.start();
      try {
        for (const job of FIO_JOBS) {
          stop.throwIfAborted();
          const result = await runFio(job, server.uri, options.seconds, options.sizeBytes, dir);
          samples.push({ run, server: spec.name, job: job.name, result });
          log(
            `run ${run}/${options.runs} ${spec.name.padEnd(8)} ${job.name.padEnd(18)} ` +
              `${formatIops(result.iops)} IOPS ${formatMiBps(result.bytesPerSecond)} MiB/s ` +
              `lat ${result.latencyMeanUs.toFixed(0)} us`,
          );
        }
      } finally {
        await server.stop();
      }
    }
  }
  return samples;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  if (sorted.length % 2 === 1) return sorted[middle] ?? Number.NaN;
  return ((sorted[middle - 1] ?? Number.NaN) + (sorted[middle] ?? Number.NaN)) / 2;
}

type Medians = Record<string, Partial<Record<ServerName, FioResult>>>;

function medians(samples: Sample[], servers: ServerName[]): Medians {
  const table: Medians = {};
  for (const job of FIO_JOBS) {
    const row: Partial<Record<ServerName, FioResult>> = {};
    for (const server of servers) {
      const mine = samples
        .filter((s) => s.job === job.name && s.server === server)
        .map((s) => s.result);
      if (mine.length === 0) continue;
      row[server] = {
        iops: median(mine.map((r) => r.iops)),
        bytesPerSecond: median(mine.map((r) => r.bytesPerSecond)),
        latencyMeanUs: median(mine.map((r) => r.latencyMeanUs)),
      };
    }
    table[job.name] = row;
  }
  return table;
}

function formatIops(iops: number): string {
  return iops >= 10_000 ? `${(iops / 1000).toFixed(1)}k` : iops.toFixed(0);
}

function formatMiBps(bytesPerSecond: number): string {
  return (bytesPerSecond / (1024 * 1024)).toFixed(0);
}

function printTable(table: Medians, servers: ServerName[]): void {
  const ratioColumns: ServerName[] = servers.includes('ferry')
    ? servers.filter((server) => server !== 'ferry')
    : [];
  const header = [
    'job',
    ...servers.map((s) => `${s} IOPS  MiB/s`),
    ...ratioColumns.map((o) => `ferry/${o}`),
  ];
  const rows = FIO_JOBS.map((job) => {
    const row = table[job.name] ?? {};
    const cells = servers.map((server) => {
      const result = row[server];
      return result === undefined
        ? '-'
        : `${formatIops(result.iops).padStart(7)} ${formatMiBps(result.bytesPerSecond).padStart(6)}`;
    });
    const ratios = ratioColumns.map((other) => {
      const ferry = row.ferry?.bytesPerSecond;
      const theirs = row[other]?.bytesPerSecond;
      return ferry === undefined || theirs === undefined ? '-' : (ferry / theirs).toFixed(2);
    });
    return [job.name, ...cells, ...ratios];
  });
  const widths = header.map((title, i) =>
    Math.max(title.length, ...rows.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: string[]): string =>
    cells.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ');
  process.stdout.write(
    `\nmedians (ratios are of bandwidth, which for one block size is IOPS too)\n`,
  );
  process.stdout.write(`${line(header).trimEnd()}\n`);
  for (const row of rows) process.stdout.write(`${line(row).trimEnd()}\n`);
}

function log(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  checkTools(options);
  const stop = killChildrenOnExit();
  await mkdir(options.parentDir, { recursive: true });
  const dir = await mkdtemp(join(options.parentDir, 'ferry-bench-'));
  await inBenchDir(dir, options.isKeep, stop, async () => {
    log(
      `${formatSize(options.sizeBytes)} image, ${options.runs} run(s), ${options.seconds} s per job, in ${dir}`,
    );
    const servers = await prepareServers(options, dir, stop);
    const names = servers.map((server) => server.name);
    const samples = await runAll(options, servers, dir, stop);
    const table = medians(samples, names);
    printTable(table, names);
    if (options.jsonPath !== undefined) {
      const config = {
        sizeBytes: options.sizeBytes,
        runs: options.runs,
        seconds: options.seconds,
        ferryMode: options.ferryMode,
        jobs: FIO_JOBS,
      };
      await writeFile(
        options.jsonPath,
        `${JSON.stringify({ config, samples, medians: table }, null, 2)}\n`,
      );
      log(`wrote ${options.jsonPath}`);
    }
  });
}

runBenchMain(main);
