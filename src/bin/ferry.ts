import { readFile } from 'node:fs/promises';
import { runCli } from '../cli/run.js';

/**
 * The entry of the `ferry` command (bin/ferry.js imports this file): reads the process's
 * arguments and environment, runs the command, exits with its code. `ferry serve`'s wiring is in
 * serve.ts; everything else talks to a running server over the API.
 */
const packageJson = JSON.parse(
  await readFile(new URL('../../../package.json', import.meta.url), 'utf8'),
) as { version?: string };

const code = await runCli({
  argv: process.argv.slice(2),
  version: packageJson.version ?? 'unknown',
  env: process.env,
  cwd: process.cwd(),
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
  ...(process.stderr.isTTY ? { terminal: process.stderr } : {}),
  onInterrupt: (handler) => {
    process.on('SIGINT', handler);
    return () => process.off('SIGINT', handler);
  },
  // Loaded only for `serve`: the server's modules (Fastify, pino, NBD) would triple the start-up
  // time of every other command.
  demo: async (options) => {
    const { demo } = await import('./demo.js');
    return demo(options, (text) => process.stdout.write(`${text}\n`));
  },
  serve: async (options) => {
    const { createServeLogger, serve } = await import('./serve.js');
    return serve(options, createServeLogger(options.logFormat));
  },
});
// Exit explicitly: idle keep-alive sockets of fetch would otherwise hold the process for seconds.
// The empty write's callback runs once earlier output has been handed to the OS.
process.stdout.write('', () => process.exit(code));
