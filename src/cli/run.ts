import { type Command, CommanderError } from 'commander';
// The table itself, not api/index.js: that would load Fastify into every CLI command.
import { mappingOf } from '../api/error-table.js';
import { errorCodeOf, errorMessageOf, FerryError } from '../util/errors.js';
import { ApiClient, DEFAULT_API_URL } from './api-client.js';
import type { CliContext, TerminalStream } from './context.js';
import type { DemoFunction } from './demo-command.js';
import { buildProgram } from './program.js';
import type { ServeFunction } from './serve-command.js';

export interface CliEnvironment {
  readonly argv: readonly string[];
  /** Printed by `ferry --version`. */
  readonly version: string;
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly cwd: string;
  readonly stdout: (text: string) => void;
  readonly stderr: (text: string) => void;
  readonly serve: ServeFunction;
  /** Runs `ferry demo` (its agent and NBD server are in this process); absent in unit tests. */
  readonly demo?: DemoFunction;
  /** Standard error, when it is a terminal: progress bars are drawn there. */
  readonly terminal?: TerminalStream;
  /** Routes Ctrl-C to `handler` until the returned function is called; default: never. */
  readonly onInterrupt?: (handler: () => void) => () => void;
}

/** Exit codes (listed in `ferry --help`): usage errors are told apart from failed operations. */
export const ExitCode = { Ok: 0, Failed: 1, Usage: 2, Interrupted: 130 } as const;

/**
 * Runs one `ferry` command line and resolves with its exit code; never rejects. Errors are
 * printed as `ferry: <message>` on stderr; the exit code of an API error comes from the same
 * table as its HTTP status (api/error-table.ts).
 */
export async function runCli(environment: CliEnvironment): Promise<number> {
  const context: CliContext = {
    api: new ApiClient(environment.env.FERRY_API || DEFAULT_API_URL, environment.env.FERRY_TOKEN),
    print: (text) => environment.stdout(`${text}\n`),
    cwd: environment.cwd,
    printError: environment.stderr,
    terminal: environment.terminal ?? null,
    onInterrupt: environment.onInterrupt ?? (() => () => {}),
  };
  let exitCode: number = ExitCode.Ok;
  const program = buildProgram(
    environment.version,
    context,
    environment.serve,
    environment.demo ?? noDemo,
    (code) => {
      exitCode = code;
    },
  );
  // On every command: each copied its parent's settings when it was created, before this.
  const configure = (command: Command): void => {
    command.configureOutput({ writeOut: environment.stdout, writeErr: environment.stderr });
    for (const sub of command.commands) configure(sub);
  };
  configure(program);
  try {
    await program.parseAsync([...environment.argv], { from: 'user' });
    return exitCode;
  } catch (error) {
    if (error instanceof CommanderError) return commanderExitCode(error);
    environment.stderr(`ferry: ${errorMessageOf(error)}\n`);
    if (!(error instanceof FerryError) && errorCodeOf(error) === undefined) {
      // Not an operating error: show where it came from.
      environment.stderr(`${(error as Error).stack ?? ''}\n`);
    }
    return mappingOf(errorCodeOf(error) ?? '').exitCode;
  }
}

/** Commander has printed its message already; only the exit code is left to decide. */
function commanderExitCode(error: CommanderError): number {
  switch (error.code) {
    case 'commander.helpDisplayed':
    case 'commander.version':
      return ExitCode.Ok;
    default:
      // Includes 'commander.help' (a command group given without a subcommand).
      return ExitCode.Usage;
  }
}

async function noDemo(): Promise<number> {
  throw new Error('ferry demo is not available in this process');
}
