import { mkdir, mkdtemp } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/util/size.js';
import { positiveInteger, sectionsOf } from './bench-options.js';
import { hasTool, inBenchDir, killChildrenOnExit, runBenchMain, runCommand } from './children.js';
import { writeImage } from './image-file.js';
import type { BenchContext } from './migrate-context.js';
import { runDbtSection } from './migrate-dbt.js';
import type { FerryDriverName } from './migrate-ferry.js';
import { runIdleSection } from './migrate-idle.js';
import { runReflinkSection } from './migrate-reflink.js';
import { log, step } from './migrate-step.js';
import { filesystemTypeOf } from './migrate-system.js';
import { runLoadSection } from './migrate-under-load.js';

/**
 * Migration benchmark (issue 3 item 8; DESIGN.md, "Benchmarks"): Ferry's live disk moves against
 * the reference tools, in the same run, with ratios against the goals.
 *
 *   1. idle: a thick and a thin disk moved by `mirror` vs `qemu-img convert` and `cp`
 *   2. load: every method under fio random writes vs QEMU's blockdev-mirror (both copy modes)
 *   3. dbt: passes and dirty bytes at the switchover vs the guest's write rate, hot-block
 *      avoidance on and off
 *   4. reflink: the idle thick move again on a loop-mounted XFS, where the copy is reflinks, vs
 *      cp --reflink (needs root)
 *
 * Progress goes to stderr, the markdown report to stdout. Every child is killed on exit or
 * signal, and the temporary directory removed unless --keep.
 *
 *   npm run bench:migrate -- [--only idle|load|dbt|reflink] [--runs 3] [--size 4G] [--load-size 1G]
 *                            [--seconds 5] [--ferry api|agent] [--dir DIR] [--keep]
 */
const USAGE = `usage: node dist/bench/migrate.js [options]
  --only SECTION     idle, load, dbt or reflink (repeatable; default: all four; reflink needs
                     root, to loop-mount an XFS)
  --runs N           repetitions of every measurement; medians are reported (default 3)
  --size SIZE        idle section's disk size (default 4G)
  --load-size SIZE   load and dbt sections' disk size (default 1G)
  --seconds N        seconds of guest load alone before each migration under load (default 5)
  --timeout N        seconds each migration or copy may take before the bench fails (default 900)
  --ferry DRIVER     api (default: ferry serve and its REST API) or agent (the Agent in a child
                     process over IPC); the dbt section always uses agent (it needs tuning)
  --no-drop-caches   do not drop the page cache before each timed step (needs root)
  --dir DIR          where the temporary directory goes (default: the OS temp dir); use a real
                     disk, not tmpfs
  --keep             keep the temporary directory (images, fio logs, Ferry data dir)`;

type Section = 'idle' | 'load' | 'dbt' | 'reflink';
const SECTIONS: readonly Section[] = ['idle', 'load', 'dbt', 'reflink'];

interface Options {
  readonly sections: readonly Section[];
  readonly runs: number;
  readonly idleSizeBytes: number;
  readonly loadSizeBytes: number;
  readonly baselineSeconds: number;
  readonly stepTimeoutMs: number;
  readonly ferryDriver: FerryDriverName;
  readonly isDropCaches: boolean;
  readonly parentDir: string;
  readonly isKeep: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      only: { type: 'string', multiple: true },
      runs: { type: 'string', default: '3' },
      size: { type: 'string', default: '4G' },
      'load-size': { type: 'string', default: '1G' },
      seconds: { type: 'string', default: '5' },
      timeout: { type: 'string', default: '900' },
      ferry: { type: 'string', default: 'api' },
      'no-drop-caches': { type: 'boolean', default: false },
      dir: { type: 'string', default: tmpdir() },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (values.ferry !== 'api' && values.ferry !== 'agent') {
    throw new Error('--ferry must be api or agent');
  }
  return {
    sections: sectionsOf(values.only, SECTIONS),
    runs: positiveInteger(values.runs, 'runs'),
    idleSizeBytes: parseSize(values.size),
    loadSizeBytes: parseSize(values['load-size']),
    baselineSeconds: positiveInteger(values.seconds, 'seconds'),
    stepTimeoutMs: positiveInteger(values.timeout, 'timeout') * 1000,
    ferryDriver: values.ferry,
    isDropCaches: !values['no-drop-caches'],
    parentDir: values.dir,
    isKeep: values.keep,
  };
}

function checkTools(options: Options): void {
  const needed = ['qemu-img', 'cp', 'sync'];
  if (options.sections.includes('load') || options.sections.includes('dbt')) needed.push('fio');
  if (options.sections.includes('load')) needed.push('qemu-storage-daemon');
  const missing = needed.filter((tool) => !hasTool(tool));
  if (missing.length > 0) {
    throw new Error(
      `missing ${missing.join(', ')}: apt-get install fio qemu-utils qemu-system-common`,
    );
  }
}

async function runSections(options: Options, context: BenchContext): Promise<void> {
  let loadMaster: string | undefined;
  const master = async (): Promise<string> => {
    if (loadMaster !== undefined) return loadMaster;
    const path = join(context.dir, 'master-load.raw');
    await step('writing the load image', context.stepTimeoutMs, () =>
      writeImage(path, options.loadSizeBytes, context.stop),
    );
    loadMaster = path;
    return path;
  };
  for (const section of options.sections) {
    log(`section ${section}`);
    let text: string;
    if (section === 'idle') text = await runIdleSection(context, options.idleSizeBytes);
    else if (section === 'reflink') text = await runReflinkSection(context, options.idleSizeBytes);
    else if (section === 'load')
      text = await runLoadSection(context, await master(), options.loadSizeBytes);
    else text = await runDbtSection(context, await master(), options.loadSizeBytes);
    // Each section's table as soon as it is done: a later failure does not lose it.
    process.stdout.write(`${text}\n`);
  }
}

/** One line naming what the numbers were measured with. */
async function describeMachine(options: Options, fsType: string): Promise<string> {
  const firstLine = async (file: string): Promise<string> => {
    const text = await runCommand(file, file, ['--version'], { timeoutMs: 10_000 });
    return text.split('\n')[0]?.trim() ?? file;
  };
  const tools = [await firstLine('qemu-img')];
  if (hasTool('fio')) tools.push(await firstLine('fio'));
  return (
    `${cpus().length} CPUs, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Node ${process.version}, ` +
    `${tools.join(', ')}; files on ${fsType} (${options.parentDir}).`
  );
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  checkTools(options);
  const stop = killChildrenOnExit();
  await mkdir(options.parentDir, { recursive: true });
  const fsType = await filesystemTypeOf(options.parentDir);
  if (fsType === 'tmpfs' || fsType === 'ramfs') {
    throw new Error(`${options.parentDir} is on ${fsType}, not a disk: pass --dir on a real disk`);
  }
  const dir = await mkdtemp(join(options.parentDir, 'ferry-migrate-bench-'));
  const context: BenchContext = {
    dir,
    runs: options.runs,
    baselineSeconds: options.baselineSeconds,
    stepTimeoutMs: options.stepTimeoutMs,
    ferryDriver: options.ferryDriver,
    isDropCaches: options.isDropCaches,
    stop,
  };
  await inBenchDir(dir, options.isKeep, stop, async () => {
    log(
      `${options.sections.join(', ')}; ${options.runs} run(s); idle ${formatSize(options.idleSizeBytes)}, ` +
        `load ${formatSize(options.loadSizeBytes)}; in ${dir} (${fsType})`,
    );
    process.stdout.write(
      `# Ferry migration benchmark\n\n${await describeMachine(options, fsType)}\n\n`,
    );
    await runSections(options, context);
  });
}

runBenchMain(main);
