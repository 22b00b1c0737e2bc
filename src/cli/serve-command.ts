import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { errorMessageOf } from '../util/errors.js';
import { parseSize, SIZE_HELP } from '../util/size.js';
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
  /** Thin disks to create at start when no disk of that name exists (`--disk NAME:SIZE`). */
  readonly ensureDisks: readonly DiskWish[];
  /** The name this host gives itself (`--name`, default the OS host name); peers show it. */
  readonly hostName: string;
  /** `--tls psk:FILE|x509:DIR`, unparsed: the entry loads it (src/nbd/tls-credentials.ts). */
  readonly tls?: string;
  /** `--tls-mode`; absent: `require` with `--tls`, else TLS only for peer hosts' keys. */
  readonly tlsMode?: 'require' | 'allow';
  /** `--max-host-migrations`, `--max-datastore-migrations` (control/scheduler.ts). */
  readonly limits?: { readonly host: number; readonly datastore: number };
  /** `--log-format`: pretty on a terminal (auto), or always JSON lines, or always pretty. */
  readonly logFormat?: 'auto' | 'json' | 'pretty';
}

export interface DiskWish {
  readonly name: string;
  readonly sizeBytes: number;
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
      'state directory: datastore registry, jobs and inventory (ferry.db), move journal, default datastore',
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
    .option('--name <name>', 'the name this host gives itself, shown to other hosts', hostname())
    .option(
      '--tls <psk:FILE|x509:DIR>',
      'NBD over TLS (STARTTLS) with psktool keys or certificates',
    )
    .addOption(
      new Option(
        '--tls-mode <mode>',
        'require: no plain clients (default with --tls); allow',
      ).choices(['require', 'allow']),
    )
    .addOption(
      new Option(
        '--log-format <format>',
        'auto: readable on a terminal, JSON lines otherwise; json; pretty',
      )
        .choices(['auto', 'json', 'pretty'])
        .default('auto'),
    )
    .option(
      '--max-host-migrations <n>',
      'storage migrations at once on this host, moves to and from other hosts included; more wait in the queue',
      parseLimit,
      2,
    )
    .option(
      '--max-datastore-migrations <n>',
      'storage migrations at once per datastore (counted at both ends of a move)',
      parseLimit,
      8,
    )
    .option(
      '--disk <name:size>',
      'create this thin disk at start unless a disk of that name exists (repeatable)',
      collectDiskWish,
      [] as DiskWish[],
    )
    .addHelpText(
      'after',
      '\nExample: serve a 1 GiB disk vm1 at nbd://127.0.0.1:10809/vm1, creating it on first start:\n' +
        '  $ ferry serve --disk vm1:1G\n' +
        '\nLogs go to stderr: readable on a terminal, JSON lines otherwise (--log-format json forces ' +
        'them);\nthe line with "msg":"ready" carries nbdUrl, nbdPort, apiUrl and apiPort.\nSIGINT or SIGTERM stops it cleanly (every disk is flushed); a second signal ' +
        'exits at once.',
    )
    .addHelpText(
      'after',
      '\nNBD over TLS: make a key file once (psktool is in gnutls-bin), then serve with it:\n' +
        '  $ psktool -u alice -p keys.psk\n' +
        '  $ ferry serve --tls psk:keys.psk            (plain clients get NBD_REP_ERR_TLS_REQD)\n' +
        '  $ ferry serve --tls x509:/etc/ferry/x509   (ca-cert.pem, server-cert.pem, server-key.pem)\n' +
        'Clients (QEMU reads DIR/keys.psk; libnbd tools take the file):\n' +
        '  $ qemu-img info --object tls-creds-psk,id=tls0,endpoint=client,dir=DIR,username=alice \\\n' +
        '      --image-opts driver=nbd,host=127.0.0.1,port=10809,export=vm1,tls-creds=tls0\n' +
        "  $ nbdinfo 'nbds://alice@127.0.0.1/vm1?tls-psk-file=keys.psk'\n" +
        'Without --tls, plain clients are served and peer hosts still connect over TLS-PSK.',
    )
    .action(async (options: ServeCommandOptions) => {
      const code = await serve({
        dataDir: resolve(context.cwd, options.data),
        ensureDisks: options.disk,
        hostName: options.name,
        limits: { host: options.maxHostMigrations, datastore: options.maxDatastoreMigrations },
        ...(options.tls === undefined ? {} : { tls: options.tls }),
        ...(options.tlsMode === undefined ? {} : { tlsMode: options.tlsMode }),
        logFormat: options.logFormat,
        nbd: options.nbd,
        api: options.api,
        ...(options.socket === undefined
          ? {}
          : { socketPath: resolve(context.cwd, options.socket) }),
      });
      setExitCode(code);
    });
}

interface ServeCommandOptions {
  data: string;
  nbd: HostPort;
  api: HostPort;
  socket?: string;
  disk: DiskWish[];
  name: string;
  tls?: string;
  tlsMode?: 'require' | 'allow';
  maxHostMigrations: number;
  maxDatastoreMigrations: number;
  logFormat: 'auto' | 'json' | 'pretty';
}

/** A limit: a whole number of at least 1. */
function parseLimit(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`"${text}" is not a whole number of at least 1`);
  }
  return value;
}

/** `--disk NAME:SIZE`, e.g. `vm1:10G`; names are checked by the agent when it creates the disk. */
function collectDiskWish(text: string, previous: DiskWish[]): DiskWish[] {
  const colon = text.lastIndexOf(':');
  if (colon <= 0) throw new InvalidArgumentError(`"${text}" is not NAME:SIZE, e.g. vm1:10G`);
  try {
    return [
      ...previous,
      { name: text.slice(0, colon), sizeBytes: parseSize(text.slice(colon + 1)) },
    ];
  } catch (error) {
    throw new InvalidArgumentError(`${errorMessageOf(error)} (NAME:SIZE with ${SIZE_HELP})`);
  }
}

/** A HOST:PORT option parsed by commander, so a bad value is reported as a usage error. */
function listenOption(flags: string, description: string, fallback: string): Option {
  return new Option(flags, description)
    .argParser(parseHostPort)
    .default(parseHostPort(fallback), fallback);
}
