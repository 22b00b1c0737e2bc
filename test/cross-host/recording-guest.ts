import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { NbdClient } from '../../src/nbd/index.js';
import { prng, randomBytes } from '../migrate/harness.js';
import type { Host } from './netns.js';

/**
 * A guest of our own that records what was acknowledged, for hosts in network namespaces: the
 * test process cannot reach into a namespace, so the writer runs there as a child (this file is
 * also its script) and reports each acknowledged write on stdout. The writes are a function of
 * the seed alone, so the parent rebuilds every one from the count: after a crash, every block
 * holds what was acknowledged last, except the one write in flight, which may hold either.
 *
 * Child protocol, one line each: `ack N` after the N-th write is acknowledged; `end` when it
 * stops (SIGTERM: after the write in flight) or `lost REASON` when the connection broke.
 */
export interface GuestWrite {
  readonly offset: number;
  readonly data: Buffer;
}

/** The k-th write (k from 0) of the guest seeded with `seed` on a disk of `sizeBytes`. */
export function* guestWrites(seed: number, sizeBytes: number): Generator<GuestWrite> {
  const random = prng(seed);
  for (;;) {
    const length = 4096 * (1 + Math.floor(random() * 8));
    const offset = 4096 * Math.floor(random() * ((sizeBytes - length) / 4096));
    yield { offset, data: randomBytes(length, random) };
  }
}

export interface RecordingGuest {
  readonly child: ChildProcess;
  /** Acknowledged writes so far. */
  acked(): number;
  /** Stops it (after the write in flight) and resolves with the final count. */
  stop(): Promise<number>;
  /** Resolves when the child has ended by itself (its connection broke) or was stopped. */
  readonly ended: Promise<void>;
}

export function startRecordingGuest(
  host: Host,
  target: { port: number; exportName: string },
  seed: number,
): RecordingGuest {
  const child = host.spawn(
    process.execPath,
    [SCRIPT, String(target.port), target.exportName, String(seed)],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  let count = 0;
  const lines = createInterface({ input: child.stdout! });
  lines.on('line', (line) => {
    if (line.startsWith('ack ')) count = Number(line.slice(4));
  });
  const ended = once(child, 'exit').then(() => undefined);
  return {
    child,
    acked: () => count,
    ended,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await ended;
      return count;
    },
  };
}

/**
 * What the disk must hold after `acked` writes of guest `seed` over `initial`: the model, and
 * the one write that may or may not have landed.
 */
export function expectedAfter(
  initial: Buffer,
  seed: number,
  acked: number,
): { model: Buffer; pending: GuestWrite } {
  const model = Buffer.from(initial);
  const writes = guestWrites(seed, initial.length);
  for (let index = 0; index < acked; index += 1) {
    const write = writes.next().value as GuestWrite;
    write.data.copy(model, write.offset);
  }
  return { model, pending: writes.next().value as GuestWrite };
}

/** Compares `actual` with the model, accepting the pending write either way; throws otherwise. */
export function checkAcknowledged(
  actual: Buffer,
  expected: { model: Buffer; pending: GuestWrite },
  what: string,
): void {
  const model = Buffer.from(expected.model);
  const { offset, data } = expected.pending;
  if (actual.subarray(offset, offset + data.length).equals(data)) data.copy(model, offset);
  if (actual.equals(model)) return;
  let at = 0;
  while (at < model.length && actual[at] === model[at]) at += 1;
  throw new Error(`${what}: an acknowledged write is missing (first difference at byte ${at})`);
}

const SCRIPT = fileURLToPath(import.meta.url);

/** The child: writes until SIGTERM or a broken connection, one write in flight. */
async function runChild(port: number, exportName: string, seed: number): Promise<void> {
  const client = await NbdClient.connect({ host: '127.0.0.1', port, exportName });
  let isStopped = false;
  process.on('SIGTERM', () => {
    isStopped = true;
  });
  let acked = 0;
  for (const write of guestWrites(seed, client.size)) {
    if (isStopped) break;
    try {
      await client.write(write.offset, write.data);
    } catch (error) {
      process.stdout.write(`lost ${(error as Error).message}\n`);
      process.exit(0);
    }
    acked += 1;
    process.stdout.write(`ack ${acked}\n`);
  }
  process.stdout.write('end\n');
  await client.close().catch(() => undefined);
}

if (process.argv[1] === SCRIPT) {
  const [port, exportName, seed] = process.argv.slice(2);
  runChild(Number(port), exportName ?? '', Number(seed)).catch((error: unknown) => {
    process.stdout.write(`lost ${(error as Error).message}\n`);
    process.exit(0);
  });
}
