import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSize, parseSize } from '../src/util/size.js';
import {
  createHostPair,
  isNetnsAvailable,
  netnsUnavailableReason,
} from '../test/cross-host/netns.js';
import { guestImage } from '../test/guest/guest-image.js';
import { positiveInteger, sectionsOf } from './bench-options.js';
import { hasTool, inBenchDir, killChildrenOnExit, runBenchMain, runCommand } from './children.js';
import { describeLink, type LinkSpec } from './cross-host-link.js';
import { log, step } from './migrate-step.js';
import { ferryMove } from './vm-motion-ferry.js';
import {
  type FlowName,
  type MotionContext,
  type MotionGuest,
  type MotionSample,
  writeTemplateImage,
} from './vm-motion-guest.js';
import { qemuOnlyMove } from './vm-motion-qemu.js';
import {
  type FlowFailure,
  PAUSE_GOAL_MS,
  problemsText,
  ratioTable,
  runsTable,
  summaryTable,
  zeroDowntimeNote,
} from './vm-motion-report.js';

/**
 * VM motion benchmark (issue 8; DESIGN.md, "Benchmarks"): a running VM — 256 MiB of RAM, a
 * 1 GiB disk with 512 MiB of data, a guest writing a 4 KiB block every 10 ms with O_DIRECT and
 * fsync — moved live from host A to host B (two network namespaces joined by a veth,
 * test/cross-host/netns.ts), over the unshaped veth and over 1 Gbit/s (tbf), by
 *
 *   - Ferry: `ferry migrate VM --vm --to-host b` between two `ferry serve` (vm-motion-ferry.ts);
 *   - the reference, in the same run: the QEMU-only flow libvirt drives for
 *     `virsh migrate --live --copy-storage-all`: an NBD server in the destination QEMU,
 *     `blockdev-mirror` onto it, `migrate` paused before the switchover, the mirror cancelled in
 *     sync, `migrate-continue`, `cont` at the destination (vm-motion-qemu.ts).
 *
 * Measured per move: total time; the guest-observed pause, from host-side stamps of the guest's
 * console lines (a TCG guest's own clock stops while it is paused), as the gap from the source's
 * last line to the destination's first, and the largest gap during and after the move (the
 * stamps are taken by a process of their own at nice -10, vm-motion-stamper.ts: socket chardevs
 * for the QEMU flow, `console.log` polled every 2 ms for Ferry's VMs); QEMU's
 * downtime; Ferry's storage switchover; guest writes/s before, during and after; and whether
 * the destination's disk holds every write the guest acknowledged. Medians of `--runs`; the
 * flows alternate within each run. Goals: Ferry's pause < 200 ms, its total ≤ QEMU-only's.
 *
 * Needs root (namespaces, tc), qemu-system-x86_64, and the test guest (test/guest, built from
 * Debian packages on first use). Progress goes to stderr, the markdown report to stdout.
 *
 *   node dist/bench/vm-motion.js [--runs 3] [--link unshaped|1g|both] [--only qemu|ferry]
 *                                [--disk-size 1G] [--ram 256M] [--data 512M] [--keep]
 */
const USAGE = `usage: node dist/bench/vm-motion.js [options]
  --runs N           moves per flow and link; medians are reported (default 3)
  --link LINK        unshaped, 1g or both (default both)
  --only FLOW        qemu or ferry (repeatable; default both)
  --disk-size SIZE   the VM's disk (default 1G)
  --ram SIZE         the VM's memory (default 256M)
  --data SIZE        random data at the start of the disk, for the storage copy (default 512M)
  --interval-ms N    the guest writes a block at most every N ms (default 10; 10 ms steps)
  --blocks N         the guest's write region, in 4 KiB blocks (default 4096)
  --seconds N        seconds of guest I/O measured before each move (default 5)
  --after N          seconds the guest is watched at the destination (default 3)
  --poll-ms N        how often a Ferry VM's console file is read (default 2)
  --timeout N        seconds a boot or a move may take before the bench fails (default 600)
  --dir DIR          where the temporary directory goes (default: the OS temp dir)
  --keep             keep the temporary directory`;

const FLOWS: readonly FlowName[] = ['qemu', 'ferry'];
const LINKS: Record<string, LinkSpec> = {
  unshaped: { label: 'unshaped', mbit: null, delayMs: 0 },
  '1g': { label: '1 Gbit/s', mbit: 1000, delayMs: 0 },
};

interface Options {
  readonly runs: number;
  readonly links: readonly LinkSpec[];
  readonly flows: readonly FlowName[];
  readonly diskBytes: number;
  readonly memoryBytes: number;
  readonly dataBytes: number;
  readonly intervalMs: number;
  readonly blocks: number;
  readonly beforeSeconds: number;
  readonly afterSeconds: number;
  readonly pollMs: number;
  readonly timeoutMs: number;
  readonly parentDir: string;
  readonly isKeep: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values } = parseArgs({
    args: argv,
    options: {
      runs: { type: 'string', default: '3' },
      link: { type: 'string', default: 'both' },
      only: { type: 'string', multiple: true },
      'disk-size': { type: 'string', default: '1G' },
      ram: { type: 'string', default: '256M' },
      data: { type: 'string', default: '512M' },
      'interval-ms': { type: 'string', default: '10' },
      blocks: { type: 'string', default: '4096' },
      seconds: { type: 'string', default: '5' },
      after: { type: 'string', default: '3' },
      'poll-ms': { type: 'string', default: '2' },
      timeout: { type: 'string', default: '600' },
      dir: { type: 'string', default: tmpdir() },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const link = values.link;
  if (link !== 'both' && LINKS[link] === undefined) {
    throw new Error(`--link ${link}: expected unshaped, 1g or both`);
  }
  const links = link === 'both' ? [LINKS.unshaped!, LINKS['1g']!] : [LINKS[link]!];
  const diskBytes = parseSize(values['disk-size']);
  const memoryBytes = parseSize(values.ram);
  const dataBytes = parseSize(values.data);
  if (memoryBytes % 2 ** 20 !== 0) throw new Error('--ram must be a whole number of MiB');
  if (dataBytes > diskBytes) throw new Error('--data must fit in --disk-size');
  const blocks = positiveInteger(values.blocks, 'blocks');
  if (blocks * 4096 > diskBytes) throw new Error('--blocks must fit in --disk-size');
  return {
    runs: positiveInteger(values.runs, 'runs'),
    links,
    flows: sectionsOf(values.only, FLOWS),
    diskBytes,
    memoryBytes,
    dataBytes,
    intervalMs: positiveInteger(values['interval-ms'], 'interval-ms'),
    blocks,
    beforeSeconds: positiveInteger(values.seconds, 'seconds'),
    afterSeconds: positiveInteger(values.after, 'after'),
    pollMs: positiveInteger(values['poll-ms'], 'poll-ms'),
    timeoutMs: positiveInteger(values.timeout, 'timeout') * 1000,
    parentDir: values.dir,
    isKeep: values.keep,
  };
}

function checkMachine(): void {
  const needed = ['ip', 'tc', 'qemu-system-x86_64', 'cp', 'truncate'];
  const missing = needed.filter((tool) => !hasTool(tool));
  if (missing.length > 0) {
    throw new Error(`missing ${missing.join(', ')}: apt-get install iproute2 qemu-system-x86`);
  }
  if (!isNetnsAvailable()) throw new Error(`no network namespaces: ${netnsUnavailableReason()}`);
}

async function describeMachine(options: Options): Promise<string> {
  const qemu = (
    await runCommand('qemu', 'qemu-system-x86_64', ['--version'], { timeoutMs: 10_000 })
  )
    .split('\n')[0]
    ?.trim();
  const kernel = (await runCommand('uname', 'uname', ['-r'], { timeoutMs: 10_000 })).trim();
  return (
    `${cpus().length} CPUs, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, Linux ${kernel}, ` +
    `Node ${process.version}, ${qemu} (TCG). Guest: ${formatSize(options.memoryBytes)} RAM, 1 vCPU, ` +
    `${formatSize(options.diskBytes)} raw disk with ${formatSize(options.dataBytes)} of random data, ` +
    `writing a 4 KiB block (O_DIRECT + fsync) at most every ${options.intervalMs} ms over ` +
    `${options.blocks} blocks. Links: ${options.links.map(describeLink).join('; ')}.`
  );
}

type RunSample = MotionSample & { readonly run: number };

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  checkMachine();
  const stop = killChildrenOnExit();
  await mkdir(options.parentDir, { recursive: true });
  const dir = await mkdtemp(join(options.parentDir, 'ferry-vm-motion-bench-'));
  const pair = await createHostPair();
  const samples: RunSample[] = [];
  const failures: FlowFailure[] = [];
  try {
    await inBenchDir(dir, options.isKeep, stop, async () => {
      const image = await step('building the test guest', 900_000, () => guestImage());
      const guest: MotionGuest = {
        image,
        memoryBytes: options.memoryBytes,
        diskBytes: options.diskBytes,
        blocks: options.blocks,
        intervalMs: options.intervalMs,
      };
      const templatePath = join(dir, 'template.raw');
      await step('writing the template image', options.timeoutMs, () =>
        writeTemplateImage(templatePath, options.diskBytes, options.dataBytes, stop),
      );
      log(
        `${options.flows.join(', ')}; ${options.runs} run(s); hosts ${pair.a.ns} (${pair.a.ip}) ` +
          `and ${pair.b.ns} (${pair.b.ip}); in ${dir}`,
      );
      process.stdout.write(`# Ferry VM motion benchmark\n\n${await describeMachine(options)}\n\n`);
      for (let run = 1; run <= options.runs; run += 1) {
        for (const link of options.links) {
          await pair.setRate(link.mbit);
          for (const flow of options.flows) {
            const sampleDir = join(dir, `run${run}-${flow}-${link.mbit ?? 'unshaped'}`);
            await mkdir(sampleDir);
            const context: MotionContext = {
              pair,
              link,
              guest,
              templatePath,
              dir: sampleDir,
              beforeSeconds: options.beforeSeconds,
              afterSeconds: options.afterSeconds,
              timeoutMs: options.timeoutMs,
              stop,
            };
            log(`run ${run}/${options.runs}: ${flow} over ${describeLink(link)}`);
            try {
              const sample =
                flow === 'qemu'
                  ? await qemuOnlyMove(context)
                  : await ferryMove(context, options.pollMs);
              samples.push({ ...sample, run });
              log(
                `  total ${(sample.totalMs / 1000).toFixed(2)} s, pause ${sample.pauseMs.toFixed(1)} ms, ` +
                  `QEMU downtime ${sample.qemuDowntimeMs} ms, writes/s ${sample.writesPerSecondBefore.toFixed(1)} → ` +
                  `${sample.writesPerSecondDuring.toFixed(1)}, disk ${sample.mismatches.length === 0 ? 'ok' : 'MISMATCH'}`,
              );
            } catch (error) {
              if (stop.aborted) throw error;
              const message =
                error instanceof Error ? (error.stack ?? error.message) : String(error);
              log(`  ${flow} failed: ${message}`);
              failures.push({ flow, link: link.label, run, message });
            } finally {
              await rm(sampleDir, { recursive: true, force: true });
            }
          }
        }
      }
      const labels = options.links.map((link) => link.label);
      process.stdout.write(
        `## Medians of ${options.runs} run(s)\n\n${summaryTable(samples, labels, options.flows)}\n\n`,
      );
      const ratios = ratioTable(samples, labels);
      if (ratios !== '') {
        process.stdout.write(
          `## Ferry / QEMU only (goals: pause < ${PAUSE_GOAL_MS} ms, total ≤ 1)\n\n${ratios}\n\n`,
        );
      }
      const zeroNote = zeroDowntimeNote(samples);
      if (zeroNote !== '') process.stdout.write(`${zeroNote}\n\n`);
      process.stdout.write(`## Every run\n\n${runsTable(samples)}\n\n`);
      const resolutions = [...new Set(samples.map((s) => `- ${s.flow}: ${s.stampResolution}`))];
      process.stdout.write(
        `Console stamps (how late a line's time can be):\n\n${resolutions.join('\n')}\n\n`,
      );
      const problems = problemsText(samples, failures);
      if (problems !== '') process.stdout.write(`## Problems\n\n${problems}\n`);
      if (failures.length > 0 || samples.some((s) => s.mismatches.length > 0)) {
        process.exitCode = 1;
      }
    });
  } finally {
    await pair.dispose();
  }
}

runBenchMain(main);
