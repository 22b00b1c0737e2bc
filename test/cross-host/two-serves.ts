import { randomBytes } from 'node:crypto';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FERRY_BIN } from '../cli/ferry-process.js';
import type { ExecResult, Host, HostPair } from './netns.js';
import { type ServeInHost, startServeIn } from './serve-in.js';

/**
 * Two hosts of a pair, each running `ferry serve` (NBD and API on every address of its
 * namespace, so its own guests and CLI use loopback and the peer uses the veth), added to each
 * other with one shared key file: the setting of the cross-host tests and of bench/cross-host.
 */
export interface ServedHost {
  readonly name: 'a' | 'b';
  readonly host: Host;
  readonly dataDir: string;
  serve: ServeInHost;
  /** Runs `ferry ARGS` inside the host against its own API; never rejects for an exit code. */
  ferry(args: readonly string[], timeoutMs?: number): Promise<ExecResult>;
  /** Like `ferry` but throws unless it exits 0, and parses stdout as JSON when asked. */
  ferryOk(args: readonly string[], timeoutMs?: number): Promise<string>;
  /** Restarts `ferry serve` on the same data dir (after it died or was stopped). */
  restart(env?: Record<string, string>): Promise<ServeInHost>;
  readonly nbdPort: () => number;
}

export interface ServedPair {
  readonly a: ServedHost;
  readonly b: ServedHost;
  readonly keyFile: string;
}

export async function startServedPair(
  pair: HostPair,
  env: { a?: Record<string, string>; b?: Record<string, string> } = {},
): Promise<ServedPair> {
  const root = await mkdtemp(join(tmpdir(), 'ferry-xhost-'));
  const keyFile = join(root, 'keys.psk');
  await writeFile(keyFile, `ferry:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  const a = await startServed('a', pair.a, join(root, 'a'), env.a ?? {});
  const b = await startServed('b', pair.b, join(root, 'b'), env.b ?? {});
  await a.ferryOk(['host', 'add', 'b', apiUrlOf(b), '--key-file', keyFile]);
  await b.ferryOk(['host', 'add', 'a', apiUrlOf(a), '--key-file', keyFile]);
  return { a, b, keyFile };
}

function apiUrlOf(served: ServedHost): string {
  return `http://${served.host.ip}:${served.serve.ready.apiPort}`;
}

async function startServed(
  name: 'a' | 'b',
  host: Host,
  dataDir: string,
  env: Record<string, string>,
): Promise<ServedHost> {
  const args = (apiPort: number, nbdPort: number): string[] => [
    '--data',
    dataDir,
    '--name',
    name,
    '--nbd',
    `0.0.0.0:${nbdPort}`,
    '--api',
    `0.0.0.0:${apiPort}`,
  ];
  const served: ServedHost = {
    name,
    host,
    dataDir,
    serve: await startServeIn(host, args(0, 0), env),
    nbdPort: () => served.serve.ready.nbdPort,
    ferry: (command, timeoutMs = 120_000) =>
      host.exec(process.execPath, [FERRY_BIN, ...command], {
        timeoutMs,
        env: { ...process.env, FERRY_API: `http://127.0.0.1:${served.serve.ready.apiPort}` },
      }),
    async ferryOk(command, timeoutMs) {
      const result = await served.ferry(command, timeoutMs);
      if (result.code !== 0) {
        throw new Error(
          `ferry ${command.join(' ')} on ${name} exited ${result.code}:\n${result.stdout}\n${result.stderr}`,
        );
      }
      return result.stdout;
    },
    async restart(restartEnv = {}) {
      // The same ports: the peer knows this host by its API URL, and guests by its NBD port.
      const { apiPort, nbdPort } = served.serve.ready;
      served.serve = await startServeIn(host, args(apiPort, nbdPort), restartEnv);
      return served.serve;
    },
  };
  return served;
}
