import { openRawFile } from '../src/block/raw-file.js';
import type { ExportProvider, NbdExport } from '../src/nbd/exports.js';
import { NbdServer } from '../src/nbd/server.js';

/**
 * Ferry's NBD server over one raw image, without the agent, API or filter stack: the fallback
 * for `bench/nbd-serve.ts --ferry=direct` (and a way to see what the layers above cost).
 *
 *   node dist/bench/ferry-direct.js FILE PORT
 *
 * Serves FILE as export `bench` on 127.0.0.1:PORT until SIGTERM or SIGINT, then flushes and exits.
 * Run it with UV_THREADPOOL_SIZE=16, as bin/ferry.js sets it.
 */
const [file, portText] = process.argv.slice(2);
if (file === undefined || portText === undefined) {
  process.stderr.write('usage: ferry-direct FILE PORT\n');
  process.exit(2);
}

const device = await openRawFile(file, { provisioning: 'thick' });
const bench: NbdExport = { name: 'bench', description: `raw image ${file}`, device };
const exports: ExportProvider = {
  lookup: (name) => (name === bench.name ? bench : undefined),
  list: () => [bench],
};
const server = new NbdServer({ exports });
const { port } = await server.listenTcp('127.0.0.1', Number(portText));
process.stdout.write(`ready ${port}\n`);

const stop = async (): Promise<void> => {
  await server.close();
  await device.flush();
  await device.close();
  process.exit(0);
};
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
