import { open } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { NbdClientPool } from '../src/nbd/client-pool.js';
import { readPskFile } from '../src/nbd/psk-file.js';

/**
 * Ferry's NBD data path alone, for the TLS-cost rows of bench/cross-host: a raw file copied
 * into an export of `ferry serve` through the same pooled client a cross-host move writes with
 * (4 connections, 1 MiB writes, 16 in flight), plain or over TLS-PSK, ending with a flush.
 * A move itself always uses TLS between agents; this is how its cost is seen.
 *
 *   node dist/bench/ferry-nbd-copy.js --source FILE --host H --port P --export NAME [--psk FILE]
 *
 * Prints one JSON line: {"ms": wall time of the copy, connect to flush}.
 */
export const FERRY_NBD_COPY = fileURLToPath(import.meta.url);

const CHUNK_BYTES = 1024 * 1024;
const IN_FLIGHT_MAX = 16;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      source: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      export: { type: 'string' },
      psk: { type: 'string' },
      connections: { type: 'string', default: '4' },
    },
  });
  if (!values.source || !values.host || !values.port || !values.export) {
    throw new Error('usage: --source FILE --host H --port P --export NAME [--psk FILE]');
  }
  const psk = values.psk === undefined ? undefined : (await readPskFile(values.psk))[0];
  const file = await open(values.source, 'r');
  const startedMs = performance.now();
  const pool = await NbdClientPool.connect(
    {
      host: values.host,
      port: Number(values.port),
      exportName: values.export,
      ...(psk === undefined ? {} : { tls: { psk } }),
    },
    { connections: Number(values.connections) },
  );
  const size = pool.size;
  let next = 0;
  const worker = async (): Promise<void> => {
    const buffer = Buffer.allocUnsafe(CHUNK_BYTES);
    while (next < size) {
      const offset = next;
      next += CHUNK_BYTES;
      const length = Math.min(CHUNK_BYTES, size - offset);
      const { bytesRead } = await file.read(buffer, 0, length, offset);
      await pool.write(offset, buffer.subarray(0, bytesRead));
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT_MAX }, worker));
  await pool.flush();
  const ms = performance.now() - startedMs;
  await pool.close();
  await file.close();
  process.stdout.write(`${JSON.stringify({ ms })}\n`);
}

if (process.argv[1] === FERRY_NBD_COPY) {
  main().catch((error: unknown) => {
    process.stderr.write(`ferry-nbd-copy: ${(error as Error).message}\n`);
    process.exit(1);
  });
}
