import { resolve } from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import { METHOD_NAMES, type MethodName } from '../migrate/method.js';
import { errorMessageOf } from '../util/errors.js';
import { parseSize, SIZE_HELP } from '../util/size.js';
import type { CliContext } from './context.js';

export interface DemoCommandOptions {
  readonly dataDir?: string;
  readonly sizeBytes: number;
  readonly methods: readonly MethodName[];
  readonly depth: number;
  readonly baselineMs: number;
  readonly json: boolean;
  readonly keep: boolean;
}

/** Runs the demo and resolves with the exit code; injected by the entry, which owns the wiring. */
export type DemoFunction = (options: DemoCommandOptions) => Promise<number>;

export function addDemoCommand(
  program: Command,
  context: CliContext,
  demo: DemoFunction,
  setExitCode: (code: number) => void,
): void {
  program
    .command('demo')
    .description(
      'migrate a disk live with each method while a guest writes to it over NBD, and verify every write',
    )
    .option('--size <size>', `disk size (${SIZE_HELP})`, parseSizeOption, 256 * 1024 * 1024)
    .option(
      '--methods <list>',
      `methods to run, in order, comma-separated (${METHOD_NAMES.join(', ')})`,
      parseMethods,
      [...METHOD_NAMES] as MethodName[],
    )
    .option('--depth <n>', 'guest writes in flight', parseCount, 8)
    .option(
      '--baseline <seconds>',
      'guest run time before each migration, for its IOPS',
      parseSeconds,
      2000,
    )
    .option('--data <dir>', 'state directory (default: a temporary one, removed at the end)')
    .option('--keep', 'keep the state directory')
    .option('--json', 'print the results as JSON')
    .addHelpText(
      'after',
      '\nNeeds no running server: it starts its own agent and NBD server on a free port.\n' +
        'Exit code 0 when every migration finished and every acknowledged write was found.\n' +
        '\nExample:\n  $ ferry demo --size 1G --methods mirror,sxm',
    )
    .action(async (options: RawOptions) => {
      const code = await demo({
        ...(options.data === undefined ? {} : { dataDir: resolve(context.cwd, options.data) }),
        sizeBytes: options.size,
        methods: options.methods,
        depth: options.depth,
        baselineMs: options.baseline,
        json: options.json === true,
        keep: options.keep === true,
      });
      setExitCode(code);
    });
}

interface RawOptions {
  size: number;
  methods: MethodName[];
  depth: number;
  baseline: number;
  data?: string;
  keep?: boolean;
  json?: boolean;
}

function parseSizeOption(text: string): number {
  try {
    return parseSize(text);
  } catch (error) {
    throw new InvalidArgumentError(errorMessageOf(error));
  }
}

function parseMethods(text: string): MethodName[] {
  const names = text.split(',').map((name) => name.trim());
  for (const name of names) {
    if (!(METHOD_NAMES as readonly string[]).includes(name)) {
      throw new InvalidArgumentError(`unknown method ${name}: use ${METHOD_NAMES.join(', ')}`);
    }
  }
  return names as MethodName[];
}

function parseCount(text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1 || value > 256) {
    throw new InvalidArgumentError('a whole number from 1 to 256');
  }
  return value;
}

function parseSeconds(text: string): number {
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0 || value > 600) {
    throw new InvalidArgumentError('seconds, from 0 to 600');
  }
  return Math.round(value * 1000);
}
