import { resolve } from 'node:path';
import { type Command, Option } from 'commander';
import type { CliContext } from './context.js';
import { type HostPort, parseHostPort } from './host-port.js';

/** DESIGN.md, "Fixed points for users and tests". */
export const DEFAULT_DATA_DIR = './ferry-data';
export const DEFAULT_NBD_LISTEN = '127.0.0.1:10809';
export const DEFAULT_API_LISTEN = '127.0.0.1:7480';

export interface ServeOptions {
  /** Absolute. */
  readonly dataDir: string;
  readonly nbd: HostPort;
  readonly api: HostPort;
  /** Absolute path of a Unix socket to serve NBD on as well. */
  readonly socketPath?: string;
}

/**
 * Runs the server until it is told to stop, then resolves with the process exit code. Injected
 * by the entry (src/bin/ferry.ts), which owns the wiring, so the CLI does not import the NBD
 * server.
 */
export type ServeFunction = (options: ServeOptions) => Promise<number>;

export function addServeCommand(
  program: Command,
  context: CliContext,
  serve: ServeFunction,
  setExitCode: (code: number) => void,
): void {
  program
    .command('serve')
    .description('serve disks over NBD and the API over HTTP, with the agent in this process')
    .option(
      '--data <dir>',
      'state directory (datastore registry, default datastore)',
      DEFAULT_DATA_DIR,
    )
    .addOption(
      listenOption(
        '--nbd <host:port>',
        'NBD listen address (port 0 picks one)',
        DEFAULT_NBD_LISTEN,
      ),
    )
    .addOption(
      listenOption(
        '--api <host:port>',
        'API listen address (port 0 picks one)',
        DEFAULT_API_LISTEN,
      ),
    )
    .option('--socket <path>', 'also serve NBD on this Unix socket')
    .addHelpText(
      'after',
      '\nLogs are JSON lines on stderr; the line with "msg":"ready" carries nbdUrl, nbdPort, apiUrl ' +
        'and apiPort.\nSIGINT or SIGTERM stops it cleanly (every disk is flushed); a second signal ' +
        'exits at once.',
    )
    .action(async (options: { data: string; nbd: HostPort; api: HostPort; socket?: string }) => {
      const code = await serve({
        dataDir: resolve(context.cwd, options.data),
        nbd: options.nbd,
        api: options.api,
        ...(options.socket === undefined
          ? {}
          : { socketPath: resolve(context.cwd, options.socket) }),
      });
      setExitCode(code);
    });
}

/** A HOST:PORT option parsed by commander, so a bad value is reported as a usage error. */
function listenOption(flags: string, description: string, fallback: string): Option {
  return new Option(flags, description)
    .argParser(parseHostPort)
    .default(parseHostPort(fallback), fallback);
}
