import { resolve } from 'node:path';
import type { Command } from 'commander';
// The wire types only: importing the route module's values would load Fastify into the CLI.
import type { HostDatastoreView, HostView } from '../api/routes/hosts.js';
import { NAME_HELP } from '../host/names.js';
import { formatPskLine, PskFileError, type PskKey, readPskFile } from '../nbd/psk-file.js';
import { formatSize } from '../util/size.js';
import { type CliContext, printJson } from './context.js';
import { formatFields, formatTable } from './table.js';

const ADD_EXAMPLES = `
Each host runs its own ferry serve. Give both hosts the same key file, then add each host from
the other; the agents sign their calls to each other with that key.

Examples:
  Make a key once (psktool is in gnutls-bin), and copy the same file to both hosts:
    $ psktool -u ferry -p /etc/ferry/keys.psk
    $ scp /etc/ferry/keys.psk hostb:/etc/ferry/keys.psk

  On hosta (its ferry serve listening where hostb can reach it, e.g. --api 0.0.0.0:7480):
    $ ferry host add hostb http://hostb:7480 --key-file /etc/ferry/keys.psk
  On hostb:
    $ ferry host add hosta http://hosta:7480 --key-file /etc/ferry/keys.psk

  Then, on either:
    $ ferry host list`;

/** `ferry host ...`: add, list, show, remove the other hosts this agent knows (issue 7). */
export function addHostCommands(program: Command, context: CliContext): void {
  const host = program
    .command('host')
    .description('add, list, show and remove the other hosts (their ferry serve) this one knows')
    .addHelpText('after', ADD_EXAMPLES);

  host
    .command('add')
    .description("add another host's agent, authenticated with a pre-shared key both hosts hold")
    .argument('<name>', `what this host calls it: ${NAME_HELP}`)
    .argument('<url>', "its agent's API, http://HOST:PORT (where its ferry serve --api listens)")
    .requiredOption('--key-file <file>', 'psktool key file (IDENTITY:HEXKEY lines), same on both')
    .option('--identity <id>', 'which key of the file to use (default: the first)')
    .option('--json', 'print the host as JSON')
    .addHelpText('after', ADD_EXAMPLES)
    .action(async (name: string, url: string, options: AddOptions) => {
      const key = pickKey(await readPskFile(resolve(context.cwd, options.keyFile)), options);
      const added = await context.api.post<HostView>('/v1/hosts', {
        name,
        url,
        key: formatPskLine(key),
      });
      if (options.json) return printJson(context, added);
      context.print(`Added host ${added.name} at ${added.url} (key identity ${added.identity}).`);
      if (added.error !== null) context.printError(`note: ${added.error}\n`);
      else context.print(describeStatus(added));
    });

  host
    .command('list')
    .alias('ls')
    .description('list the hosts with their reachability, version and datastores (asked live)')
    .option('--json', 'print the list as JSON')
    .action(async (options: { json?: boolean }) => {
      const { hosts } = await context.api.get<{ hosts: HostView[] }>('/v1/hosts');
      if (options.json) return printJson(context, hosts);
      if (hosts.length === 0) {
        context.print('No hosts; add one with: ferry host add NAME URL --key-file FILE');
        return;
      }
      context.print(
        formatTable<HostView>(
          [
            { header: 'NAME', value: (h) => h.name },
            { header: 'URL', value: (h) => h.url },
            { header: 'REACHABLE', value: (h) => (h.reachable ? 'yes' : 'no') },
            { header: 'VERSION', value: (h) => h.version ?? '-' },
            { header: 'DATASTORES', value: (h) => describeDatastores(h.datastores) },
          ],
          hosts,
        ),
      );
      // Below the table: errors are long, and a column would push every row off the screen.
      for (const entry of hosts) {
        if (entry.error !== null) context.print(`${entry.name}: ${entry.error}`);
      }
    });

  host
    .command('show')
    .description('show one host and what it says of itself now')
    .argument('<name>', 'host name')
    .option('--json', 'print the host as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const shown = await context.api.get<HostView>(`/v1/hosts/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, shown);
      context.print(
        formatFields([
          ['name', shown.name],
          ['url', shown.url],
          ['key identity', shown.identity],
          ['reachable', shown.reachable ? 'yes' : 'no'],
          ['calls itself', shown.host ?? '-'],
          ['version', shown.version ?? '-'],
          ['datastores', describeDatastores(shown.datastores)],
          ...(shown.error === null ? [] : ([['error', shown.error]] as const)),
        ]),
      );
    });

  host
    .command('rm')
    .alias('remove')
    .description('forget a host and delete its key from this one (the other host is untouched)')
    .argument('<name>', 'host name')
    .option('--json', 'print the result as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      await context.api.delete(`/v1/hosts/${encodeURIComponent(name)}`);
      if (options.json) return printJson(context, { removed: name });
      context.print(`Removed host ${name}.`);
    });
}

interface AddOptions {
  keyFile: string;
  identity?: string;
  json?: boolean;
}

/** The key named by `--identity`, or the file's first; `ERR_PSK_FILE` (a usage error) if absent. */
function pickKey(keys: readonly PskKey[], options: AddOptions): PskKey {
  const key =
    options.identity === undefined
      ? keys[0]
      : keys.find((candidate) => candidate.identity === options.identity);
  if (key === undefined) {
    const known = keys.map((candidate) => candidate.identity).join(', ');
    throw new PskFileError(
      `${options.keyFile} has no key for the identity ${options.identity ?? '(none)'}; it holds: ${known}`,
    );
  }
  return key;
}

function describeStatus(view: HostView): string {
  return `It is ${view.host ?? 'unnamed'}, Ferry ${view.version ?? 'unknown'}, with datastores ${describeDatastores(view.datastores)}.`;
}

/** `local (9.5G free), fast (1.2T free)`; '-' when unknown. */
function describeDatastores(datastores: readonly HostDatastoreView[] | null): string {
  if (datastores === null) return '-';
  if (datastores.length === 0) return 'none';
  return datastores
    .map((d) => `${d.name} (${d.freeBytes === null ? '?' : formatSize(d.freeBytes)} free)`)
    .join(', ');
}
