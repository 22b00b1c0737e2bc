import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Host, HostPair } from '../test/cross-host/netns.js';

/**
 * The links of the cross-host benchmark (issue 7): the veth between two namespaces, unshaped or
 * shaped with tbf, and with a one-way delay added by the delay relay (no netem on this kernel).
 * A client on host A reaches a server on host B through a `Route`: straight to B's address, or
 * through a relay on A's loopback that forwards to B after the delay in each direction.
 */

export interface LinkSpec {
  readonly label: string;
  /** tbf rate in Mbit/s (10^6 bit/s); null: unshaped. */
  readonly mbit: number | null;
  /** One-way delay in each direction, added by the relay; 0: no relay. */
  readonly delayMs: number;
}

export interface Route {
  /** Where a client on A connects. */
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

const RELAY_SCRIPT = fileURLToPath(new URL('../test/cross-host/delay-relay.js', import.meta.url));
export const TCP_PROBE = fileURLToPath(new URL('../test/cross-host/tcp-probe.js', import.meta.url));
const START_TIMEOUT_MS = 10_000;

export function describeLink(link: LinkSpec): string {
  const rate = link.mbit === null ? 'unshaped veth' : `${link.mbit} Mbit/s tbf`;
  return link.delayMs === 0 ? rate : `${rate}, ${link.delayMs} ms each way (relay)`;
}

/** Shapes the pair's link for `link` (both directions). */
export async function applyLink(pair: HostPair, link: LinkSpec): Promise<void> {
  await pair.setRate(link.mbit);
}

/**
 * A route from A to `b:port` over `link`: direct, or through a delay relay started in A's
 * namespace on its loopback (the relay's traffic crosses the shaped veth like a direct one).
 */
export async function routeTo(
  pair: HostPair,
  link: LinkSpec,
  port: number,
  /** The relay's port on A's loopback; default any. Ferry's peers need B's own NBD port. */
  listenPort = 0,
): Promise<Route> {
  if (link.delayMs === 0) return { host: pair.b.ip, port, close: async () => undefined };
  const listen = `127.0.0.1:${listenPort}`;
  const args = [RELAY_SCRIPT, '--listen', listen, '--target', `${pair.b.ip}:${port}`];
  args.push('--delay-ms', String(link.delayMs));
  const { child, record } = await spawnListening(pair.a, args);
  return {
    host: '127.0.0.1',
    port: record.port,
    close: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

/** Spawns a Node script in `host` that prints {"port":N} when listening; resolves then. */
export async function spawnListening(
  host: Host,
  args: readonly string[],
): Promise<{ child: ReturnType<Host['spawn']>; record: { port: number } }> {
  const child = host.spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString('utf8');
  });
  const lines = createInterface({ input: child.stdout! });
  let timer: NodeJS.Timeout | undefined;
  try {
    const line = await new Promise<string>((resolve, reject) => {
      lines.once('line', resolve);
      child.once('exit', (code) => reject(new Error(`${args[0]} exited ${code}: ${stderr}`)));
      timer = setTimeout(
        () => reject(new Error(`${args[0]} did not listen: ${stderr}`)),
        START_TIMEOUT_MS,
      );
    });
    return { child, record: JSON.parse(line) as { port: number } };
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves once a client on `from` can connect to `host:port`; throws after 10 s. */
export async function waitForListener(from: Host, host: string, port: number): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const result = await from.exec(process.execPath, [
      TCP_PROBE,
      'connect',
      '--target',
      `${host}:${port}`,
      '--timeout-ms',
      '1000',
    ]);
    if (result.code === 0 && result.stdout.includes('"ok":true')) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nothing listens on ${host}:${port} (seen from ${from.ns}) after 10 s`);
}
