import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { FERRY_BIN, type ReadyLine, type ServeProcess } from '../cli/ferry-process.js';
import type { Host } from './netns.js';

/**
 * `ferry serve` inside one of a pair's namespaces: `ip netns exec <ns> node bin/ferry.js serve`,
 * found ready through its "ready" log line as `startServe` (test/cli/ferry-process.ts) does.
 */

export interface ServeInHost extends ServeProcess {
  readonly host: Host;
  /** Sends `signal` (default SIGTERM: a clean stop, every disk flushed) and resolves on exit. */
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

const READY_TIMEOUT_MS = 30_000;

/**
 * Starts `ferry serve args...` in `host`'s namespace. NBD and the API listen on the host's veth
 * address on port 0 unless `args` name `--nbd` or `--api`; `args` must name `--data` (a default
 * ./ferry-data would be shared between the two hosts). `env` adds to the environment. Resolves
 * once it logs "ready"; rejects with its log if it exits first or is not ready within 30 s (it
 * is killed then). The pair's dispose kills it too.
 */
export async function startServeIn(
  host: Host,
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<ServeInHost> {
  if (!args.includes('--data')) throw new Error('startServeIn: pass --data DIR');
  const listen = [
    ...(args.includes('--nbd') ? [] : ['--nbd', `${host.ip}:0`]),
    ...(args.includes('--api') ? [] : ['--api', `${host.ip}:0`]),
  ];
  const child = host.spawn(process.execPath, [FERRY_BIN, 'serve', ...listen, ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, ...env },
  });
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const logLines: string[] = [];
  const lines = createInterface({ input: child.stderr! });
  let timer: NodeJS.Timeout | undefined;
  const ready = await new Promise<ReadyLine>((resolve, reject) => {
    lines.on('line', (line) => {
      logLines.push(line);
      const record = readyRecordOf(line);
      if (record !== undefined) resolve(record as unknown as ReadyLine);
    });
    void exited.then((code) =>
      reject(new Error(`ferry serve in ${host.ns} exited with ${code}:\n${logLines.join('\n')}`)),
    );
    timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`ferry serve in ${host.ns} not ready in 30 s:\n${logLines.join('\n')}`));
    }, READY_TIMEOUT_MS);
  }).finally(() => clearTimeout(timer));
  const kill = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    return exited;
  };
  return { child, ready, logLines, exited, host, kill };
}

function readyRecordOf(line: string): Record<string, unknown> | undefined {
  try {
    const record = JSON.parse(line) as Record<string, unknown>;
    return record.msg === 'ready' ? record : undefined;
  } catch {
    return undefined;
  }
}
