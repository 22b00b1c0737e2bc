import { mkdir, mkdtemp } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/util/size.js';
import {
  createHostPair,
  isNetnsAvailable,
  netnsUnavailableReason,
} from '../test/cross-host/netns.js';
import { positiveInteger, sectionsOf } from './bench-options.js';
import { hasTool, inBenchDir, killChildrenOnExit, runBenchMain, runCommand } from './children.js';
import { type CrossHostContext, runIdleSection, runTlsSection } from './cross-host-idle.js';
import type { LinkSpec } from './cross-host-link.js';
import { runLoadSection } from './cross-host-load.js';
import { makePsk } from './cross-host-references.js';
import { writeImage } from './image-file.js';
import { log, step } from './migrate-step.js';
import { filesystemTypeOf } from './migrate-system.js';

/**
 * Cross-host benchmark (issue 7; DESIGN.md, "Benchmarks"): two hosts are two network namespaces
 * joined by a veth (test/cross-host/netns.ts), shaped with tbf, delayed by the delay relay.
 *
 *   1. idle: a whole-disk copy A → B over an unshaped veth and over a 1 Gbit/s link with 2 ms
 *      each way: Ferry vs `qemu-img convert` and `nbdcopy --connections=4` into `qemu-nbd` on B,
 *      as ratios to the link rate (goal for Ferry: ≥ 0.95 of the shaped link)
 *   2. load: under fio 4k random writes at iodepth 16 through the source export, guest IOPS
 *      before and during, time, downtime, `--mirror sync` vs `auto`, at 1 Gbit/s and 100 Mbit/s
 *   3. tls: the idle copies with TLS on and off
 *
 * Ferry's side is in cross-host-ferry.ts. Progress goes to stderr, the markdown report to
 * stdout. Needs root (namespaces, tc, dropping the page cache).
 *
 *   node dist/bench/cross-host.js [--only idle|load|tls] [--runs 3] [--size 4G] [--delay-ms 2]
 *                                 [--seconds 10] [--mtu N] [--dir DIR] [--keep]
 */
const USAGE = `usage: node dist/bench/cross-host.js [options]
  --only SECTION     idle, load or tls (repeatable; default: all three)
  --runs N           repetitions of every measurement; medians are reported (default 3)
  --size SIZE        disk size (default 4G)
  --delay-ms N       one-way delay of the delayed links, each direction (default 2)
  --seconds N        seconds of fio alone before each move under load (default 10)
  --mtu N            MTU of the veth (default: the kernel's, 1500)
  --timeout N        seconds each copy may take before the bench fails (default 900)
  --no-drop-caches   do not drop the page cache before each copy
  --dir DIR          where the temporary directory goes (default: the OS temp dir); a real disk
  --keep             keep the temporary directory`;

type Section = 'idle' | 'load' | 'tls';
const SECTIONS: readonly Section[] = ['idle', 'load', 'tls'];

interface Options {
  readonly sections: readonly Section[];
  readonly runs: number;
  readonly sizeBytes: number;
  readonly delayMs: number;
  readonly seconds: number;
  readonly mtu: number | undefined;
  readonly stepTimeoutMs: number;
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
      'delay-ms': { type: 'string', default: '2' },
      seconds: { type: 'string', default: '10' },
      mtu: { type: 'string' },
      timeout: { type: 'string', default: '900' },
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
  return {
    sections: sectionsOf(values.only, SECTIONS),
    runs: positiveInteger(values.runs, 'runs'),
    sizeBytes: parseSize(values.size),
    delayMs: positiveInteger(values['delay-ms'], 'delay-ms'),
    seconds: positiveInteger(values.seconds, 'seconds'),
    mtu: values.mtu === undefined ? undefined : positiveInteger(values.mtu, 'mtu'),
    stepTimeoutMs: positiveInteger(values.timeout, 'timeout') * 1000,
    isDropCaches: !values['no-drop-caches'],
    parentDir: values.dir,
    isKeep: values.keep,
  };
}

function checkMachine(options: Options): void {
  const needed = ['ip', 'tc', 'qemu-img', 'qemu-nbd', 'nbdcopy'];
  if (options.sections.includes('load')) needed.push('fio');
  if (options.sections.includes('tls')) needed.push('psktool');
  const missing = needed.filter((tool) => !hasTool(tool));
  if (missing.length > 0) {
    throw new Error(
      `missing ${missing.join(', ')}: apt-get install iproute2 qemu-utils libnbd-bin fio gnutls-bin`,
    );
  }
  if (!isNetnsAvailable()) throw new Error(`no network namespaces: ${netnsUnavailableReason()}`);
}

/** The links of each section, as the issue lists them. */
function linksOf(section: Section, delayMs: number): LinkSpec[] {
  const unshaped: LinkSpec = { label: 'unshaped', mbit: null, delayMs: 0 };
  const gigabit: LinkSpec = { label: '1G', mbit: 1000, delayMs };
  if (section !== 'load') return [unshaped, gigabit];
  return [gigabit, { label: '100M', mbit: 100, delayMs }];
}

async function describeMachine(options: Options, fsType: string): Promise<string> {
  const firstLine = async (file: string, args: string[]): Promise<string> => {
    const text = await runCommand(file, file, args, { timeoutMs: 10_000 });
    return text.split('\n')[0]?.trim() ?? file;
  };
  const tools = [
    await firstLine('qemu-img', ['--version']),
    await firstLine('nbdcopy', ['--version']),
  ];
  const kernel = await firstLine('uname', ['-r']);
  return (
    `${cpus().length} CPUs, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${kernel}, ` +
    `Node ${process.version}, ${tools.join(', ')}; veth MTU ${options.mtu ?? 1500}; files on ` +
    `${fsType} (${options.parentDir}).`
  );
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  checkMachine(options);
  const stop = killChildrenOnExit();
  await mkdir(options.parentDir, { recursive: true });
  const fsType = await filesystemTypeOf(options.parentDir);
  const dir = await mkdtemp(join(options.parentDir, 'ferry-cross-host-bench-'));
  const pair = await createHostPair(options.mtu === undefined ? {} : { mtu: options.mtu });
  try {
    await inBenchDir(dir, options.isKeep, stop, async () => {
      log(
        `${options.sections.join(', ')}; ${options.runs} run(s); ${formatSize(options.sizeBytes)}; ` +
          `hosts ${pair.a.ns} (${pair.a.ip}) and ${pair.b.ns} (${pair.b.ip}); in ${dir} (${fsType})`,
      );
      process.stdout.write(
        `# Ferry cross-host benchmark\n\n${await describeMachine(options, fsType)}\n\n`,
      );
      const sourcePath = join(dir, 'source.raw');
      await step('writing the source image', options.stepTimeoutMs, () =>
        writeImage(sourcePath, options.sizeBytes, stop),
      );
      if (options.sections.includes('tls')) await makePsk(pair.a, dir);
      const context: CrossHostContext = {
        pair,
        dir,
        sourcePath,
        sizeBytes: options.sizeBytes,
        runs: options.runs,
        stepTimeoutMs: options.stepTimeoutMs,
        isDropCaches: options.isDropCaches,
        stop,
      };
      for (const section of options.sections) {
        log(`section ${section}`);
        const links = linksOf(section, options.delayMs);
        const text =
          section === 'idle'
            ? await runIdleSection(context, links)
            : section === 'tls'
              ? await runTlsSection(context, links)
              : await runLoadSection(context, links, options.seconds);
        // Each section's table as soon as it is done: a later failure does not lose it.
        process.stdout.write(`${text}\n`);
      }
    });
  } finally {
    await pair.dispose();
  }
}

runBenchMain(main);
