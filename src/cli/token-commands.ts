import type { Command } from 'commander';
// The wire types only: importing the store's values would load SQLite into the CLI.
import type { CreatedToken, TokenInfo } from '../control/token-store.js';
import { NAME_HELP } from '../host/names.js';
import { type CliContext, printJson } from './context.js';
import { formatTable } from './table.js';

const TOKEN_EXAMPLES = `
Callers from any address but this host's loopback need an API token. Tokens are managed on the
Ferry host itself (the API accepts these commands from loopback only).

Examples:
  $ ferry token create laptop            (prints the token once: keep it)
  $ FERRY_API=http://hosta:7480 FERRY_TOKEN=ferry_... ferry disk list     (from elsewhere)
  $ curl -H "Authorization: Bearer ferry_..." http://hosta:7480/v1/jobs
  $ ferry token list
  $ ferry token rm laptop               (its next request is refused)`;

/** `ferry token ...`: create, list, remove API tokens (api/auth.ts). */
export function addTokenCommands(program: Command, context: CliContext): void {
  const token = program
    .command('token')
    .description('create, list and remove API tokens for callers from other addresses')
    .addHelpText('after', TOKEN_EXAMPLES);

  token
    .command('create')
    .description('create an API token and print it (it is shown this once)')
    .argument('<name>', `who or what holds it: ${NAME_HELP}`)
    .option('--json', 'print the token as JSON')
    .action(async (name: string, options: { json?: boolean }) => {
      const created = await context.api.post<CreatedToken>('/v1/tokens', { name });
      if (options.json) return printJson(context, created);
      context.print(created.token);
      context.printError(
        `Created token ${created.name}. It is shown only now: store it, and send it as ` +
          '"Authorization: Bearer <token>" or FERRY_TOKEN=<token> for the CLI.\n',
      );
    });

  token
    .command('list')
    .alias('ls')
    .description('list the API tokens (names and dates; the tokens themselves are not kept)')
    .option('--json', 'print the tokens as JSON')
    .action(async (options: { json?: boolean }) => {
      const { tokens } = await context.api.get<{ tokens: TokenInfo[] }>('/v1/tokens');
      if (options.json) return printJson(context, tokens);
      if (tokens.length === 0) {
        context.print('No API tokens. Create one with: ferry token create NAME');
        return;
      }
      context.print(
        formatTable<TokenInfo>(
          [
            { header: 'NAME', value: (row) => row.name },
            { header: 'CREATED', value: (row) => row.createdAt },
            { header: 'LAST USED', value: (row) => row.lastUsedAt ?? '-' },
          ],
          tokens,
        ),
      );
    });

  token
    .command('rm')
    .alias('remove')
    .description('remove an API token: requests carrying it are refused from now on')
    .argument('<name>', 'the token to remove')
    .action(async (name: string) => {
      await context.api.delete(`/v1/tokens/${encodeURIComponent(name)}`);
      context.print(`Removed token ${name}.`);
    });
}
