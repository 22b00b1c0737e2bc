import { once } from 'node:events';
import { type AddressInfo, createServer, connect as netConnect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

/**
 * A TCP relay that adds a fixed one-way delay in each direction: the kernel here has no netem
 * (issue 7), so a link's latency is emulated by sending the cross-host traffic through this.
 * Each accepted connection gets its own connection to the target; bytes go through in order,
 * each chunk released `delayMs` after it arrived (at least that; Node's timers may add about a
 * millisecond). Both sockets set TCP_NODELAY, so the relay adds no Nagle wait of its own.
 *
 * Backpressure: per direction, the bytes held (waiting out their delay, plus those queued in
 * the outgoing socket) are bounded by `heldBytesMax` (default 8 MiB, so 16 MiB per connection).
 * Over the bound the reading side is paused; it resumes once the held bytes fall to half. The
 * bound caps a connection's rate at heldBytesMax / delayMs (4 GB/s at 2 ms): far above any link
 * we shape.
 *
 * Closing: a FIN is relayed in order after the data before it, with the same delay (half-close
 * works as on a real link); a socket error or reset on either side destroys both at once. A
 * side closes fully once both directions have ended, so the other closes with it.
 *
 * Use it in-process (`startDelayRelay`) or as a script, e.g. inside a namespace:
 *   ip netns exec NS node dist/test/cross-host/delay-relay.js \
 *     --listen 10.213.0.1:0 --target 10.213.0.2:10809 --delay-ms 2
 * which prints one JSON line, {"msg":"listening","host":...,"port":...}, on stdout and runs until
 * SIGTERM or SIGINT.
 */

export const HELD_BYTES_MAX_DEFAULT = 8 * 1024 * 1024;

export interface DelayRelayOptions {
  readonly listenHost: string;
  /** 0 picks a free port; `DelayRelay.port` says which. */
  readonly listenPort: number;
  readonly targetHost: string;
  readonly targetPort: number;
  /** One-way delay added in each direction; 0 relays at once (still with backpressure). */
  readonly delayMs: number;
  /** Per direction and connection; default 8 MiB. */
  readonly heldBytesMax?: number;
}

export interface DelayRelay {
  readonly host: string;
  readonly port: number;
  /** Connections accepted so far. */
  acceptedCount(): number;
  /** Stops listening and destroys every relayed connection. */
  close(): Promise<void>;
}

/** Starts listening; resolves once bound. */
export async function startDelayRelay(options: DelayRelayOptions): Promise<DelayRelay> {
  if (!(options.delayMs >= 0)) throw new Error(`delayMs ${options.delayMs} is not a delay`);
  const heldBytesMax = options.heldBytesMax ?? HELD_BYTES_MAX_DEFAULT;
  const sockets = new Set<Socket>();
  let accepted = 0;
  const server = createServer({ allowHalfOpen: true, noDelay: true }, (client) => {
    accepted += 1;
    const target = netConnect({
      host: options.targetHost,
      port: options.targetPort,
      allowHalfOpen: true,
      noDelay: true,
    });
    for (const socket of [client, target]) {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      socket.setNoDelay(true);
      // Any error (refused target, reset) ends the relayed connection on both sides.
      socket.once('error', () => {
        client.destroy();
        target.destroy();
      });
      socket.once('close', (hadError) => {
        if (hadError) (socket === client ? target : client).destroy();
      });
    }
    relayDirection(client, target, options.delayMs, heldBytesMax);
    relayDirection(target, client, options.delayMs, heldBytesMax);
  });
  server.listen({ host: options.listenHost, port: options.listenPort });
  await once(server, 'listening');
  const address = server.address() as AddressInfo;
  return {
    host: address.address,
    port: address.port,
    acceptedCount: () => accepted,
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const socket of sockets) socket.destroy();
      await closed;
    },
  };
}

interface Held {
  /** null: the FIN. */
  readonly chunk: Buffer | null;
  readonly dueMs: number;
}

/**
 * Moves `source`'s bytes to `sink`, each chunk `delayMs` after it arrived. Invariant: held bytes
 * (queued here + sink.writableLength) ≤ heldBytesMax + one chunk; `source` is paused while over.
 */
function relayDirection(source: Socket, sink: Socket, delayMs: number, heldBytesMax: number): void {
  const queue: Held[] = [];
  let queuedBytes = 0;
  let isReleaseScheduled = false;
  const heldBytes = (): number => queuedBytes + sink.writableLength;
  const resumeIfRoom = (): void => {
    if (source.isPaused() && !source.destroyed && heldBytes() <= heldBytesMax / 2) source.resume();
  };
  const release = (): void => {
    isReleaseScheduled = false;
    const nowMs = performance.now();
    while (queue.length > 0 && (queue[0]?.dueMs ?? 0) <= nowMs) {
      const { chunk } = queue.shift() as Held;
      if (sink.destroyed) continue;
      if (chunk === null) sink.end();
      else {
        queuedBytes -= chunk.length;
        sink.write(chunk);
      }
    }
    const next = queue[0];
    if (next !== undefined) schedule(next.dueMs - nowMs);
    resumeIfRoom();
  };
  const hold = (chunk: Buffer | null): void => {
    queue.push({ chunk, dueMs: performance.now() + delayMs });
    if (chunk !== null) queuedBytes += chunk.length;
    if (delayMs === 0) release();
    else if (!isReleaseScheduled) schedule(delayMs);
  };
  const schedule = (inMs: number): void => {
    isReleaseScheduled = true;
    setTimeout(release, Math.max(0, inMs));
  };
  source.on('data', (chunk: Buffer) => {
    hold(chunk);
    if (heldBytes() > heldBytesMax) source.pause();
  });
  source.once('end', () => hold(null));
  sink.on('drain', resumeIfRoom);
}

/** `HOST:PORT` or `[V6]:PORT`. */
export function parseHostPort(text: string): { host: string; port: number } {
  const colon = text.lastIndexOf(':');
  const port = Number(text.slice(colon + 1));
  const host = text.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  if (colon <= 0 || !Number.isSafeInteger(port) || port < 0 || port > 65535) {
    throw new Error(`"${text}" is not HOST:PORT`);
  }
  return { host, port };
}

const USAGE =
  'usage: node dist/test/cross-host/delay-relay.js --listen HOST:PORT --target HOST:PORT ' +
  '[--delay-ms N] [--held-max-bytes N]';

async function main(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      listen: { type: 'string' },
      target: { type: 'string' },
      'delay-ms': { type: 'string', default: '0' },
      'held-max-bytes': { type: 'string', default: String(HELD_BYTES_MAX_DEFAULT) },
    },
  });
  if (values.listen === undefined || values.target === undefined) throw new Error(USAGE);
  const listen = parseHostPort(values.listen);
  const target = parseHostPort(values.target);
  const delayMs = Number(values['delay-ms']);
  const relay = await startDelayRelay({
    listenHost: listen.host,
    listenPort: listen.port,
    targetHost: target.host,
    targetPort: target.port,
    delayMs,
    heldBytesMax: Number(values['held-max-bytes']),
  });
  process.stdout.write(
    `${JSON.stringify({ msg: 'listening', host: relay.host, port: relay.port, target, delayMs })}\n`,
  );
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      void relay.close().then(() => process.exit(0));
    });
  }
}

// Run as a script only when it has arguments: `node --test dist/test/` also runs every file
// under test/ (this one included) with none, and then it must do nothing.
const isScript = process.argv[1] === fileURLToPath(import.meta.url);
if (isScript && process.argv.length > 2) {
  main(process.argv.slice(2)).catch((error: unknown) => {
    process.stderr.write(`delay-relay: ${error instanceof Error ? error.message : error}\n`);
    process.exit(2);
  });
}
