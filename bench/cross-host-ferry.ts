import { copyFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { HostPair } from '../test/cross-host/netns.js';
import {
  type ServedHost,
  type ServedPair,
  startServedPair,
} from '../test/cross-host/two-serves.js';
import { describeLink, type LinkSpec, type Route, routeTo } from './cross-host-link.js';
import { FERRY_NBD_COPY } from './ferry-nbd-copy.js';
import { parseFioReport } from './fio-job.js';

/**
 * The Ferry side of the cross-host benchmark (issue 7), measured on the same host pair and link
 * as the references:
 *
 * - `ferryIdleCopy`, kind `move`: `ferry serve` on each host, the source image imported on A, and
 *   a live move A → B with no guest I/O (`ferry migrate vm1 --to-host b`), timed from the command
 *   to the job's end: copied, flushed and committed on B. Agent-to-agent data is TLS-PSK always.
 *   Kind `nbd`: Ferry's data path alone (bench/ferry-nbd-copy.ts: the pooled client the move
 *   writes with, into an export of B's `ferry serve`), plain or TLS: the TLS-cost rows.
 * - `ferryUnderLoad`: the same move while fio writes 4k at random, iodepth 16, through A's
 *   export; fio alone first (IOPS before), then fio during the move, stopped when it ends.
 *
 * With a delay, A reaches B's API and NBD port through delay relays on A's loopback (B's NBD
 * relay listens on B's own port number: an agent learns a peer's NBD port from its API).
 */
export class FerryNotImplementedError extends Error {
  constructor(what: string) {
    super(`${what}: not implemented yet`);
    this.name = 'FerryNotImplementedError';
  }
}

export interface FerryIdleCopyRequest {
  readonly sourcePath: string;
  readonly sizeBytes: number;
  readonly link: LinkSpec;
  readonly isTls: boolean;
  /** `move`: a live disk move; `nbd`: the NBD data path alone (plain or TLS). */
  readonly kind?: 'move' | 'nbd';
  /** A scratch directory for the data dirs; the bench removes it. */
  readonly dir: string;
  readonly timeoutMs: number;
}

/** Wall time in ms of an idle cross-host move of the whole disk (or of the NBD copy alone). */
export async function ferryIdleCopy(
  pair: HostPair,
  request: FerryIdleCopyRequest,
): Promise<number> {
  return withServed(pair, request, async (served, routes) => {
    if (request.kind === 'nbd') return nbdCopy(served, routes, request);
    await importSource(served.a, request.sourcePath);
    const startedMs = performance.now();
    const job = await move(served.a, ['--json']);
    const ms = performance.now() - startedMs;
    if (job.state !== 'succeeded') throw new Error(`the move ${job.state}: ${JSON.stringify(job)}`);
    return ms;
  });
}

export type MirrorMode = 'sync' | 'auto';

export interface FerryUnderLoadRequest {
  readonly sourcePath: string;
  readonly sizeBytes: number;
  readonly link: LinkSpec;
  readonly mirror: MirrorMode;
  /** Seconds of fio alone before the move starts. */
  readonly baselineSeconds: number;
  /** fio's `--rate_iops`; null: as fast as it can. */
  readonly rateIops: number | null;
  readonly dir: string;
  readonly timeoutMs: number;
}

export interface FerryUnderLoadSample {
  readonly iopsBefore: number;
  readonly iopsDuring: number;
  readonly moveMs: number;
  readonly downtimeMs: number;
}

export async function ferryUnderLoad(
  pair: HostPair,
  request: FerryUnderLoadRequest,
): Promise<FerryUnderLoadSample> {
  return withServed(pair, request, async (served) => {
    const { a } = served;
    await importSource(a, request.sourcePath);
    const uri = `nbd://127.0.0.1:${a.nbdPort()}/vm1`;
    const before = await a.host.exec(
      'fio',
      fioArgs(uri, request.sizeBytes, request.baselineSeconds, request.rateIops),
      {
        timeoutMs: (request.baselineSeconds + 60) * 1000,
      },
    );
    if (before.code !== 0) throw new Error(`fio before the move: ${before.stderr}`);
    const iopsBefore = parseFioReport(before.stdout, 'fio before the move').write.iops;
    // fio during: a long run stopped with SIGINT once the move ended (fio then reports).
    const during = a.host.spawn('fio', fioArgs(uri, request.sizeBytes, 3600, request.rateIops), {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    during.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    const exited = new Promise((resolve) => during.once('exit', resolve));
    await new Promise((resolve) => setTimeout(resolve, 500));
    const startedMs = performance.now();
    let job: MoveJob;
    try {
      job = await move(a, ['--mirror', request.mirror, '--json']);
    } finally {
      during.kill('SIGINT');
      await exited;
    }
    const moveMs = performance.now() - startedMs;
    if (job.state !== 'succeeded') throw new Error(`the move ${job.state}: ${JSON.stringify(job)}`);
    const iopsDuring = parseFioReport(output, 'fio during the move').write.iops;
    return { iopsBefore, iopsDuring, moveMs, downtimeMs: job.downtimeMs ?? Number.NaN };
  });
}

interface MoveJob {
  readonly state: string;
  readonly downtimeMs: number | null;
}

interface Routes {
  readonly api: Route;
  readonly nbd: Route;
}

/** Two served hosts for one sample; A knows B through the link's relays when it has a delay. */
async function withServed<T>(
  pair: HostPair,
  request: { readonly link: LinkSpec },
  body: (served: ServedPair, routes: Routes) => Promise<T>,
): Promise<T> {
  const served = await startServedPair(pair);
  let routes: Routes | undefined;
  try {
    const { b } = served;
    routes = {
      api: await routeTo(pair, request.link, b.serve.ready.apiPort),
      nbd: await routeTo(pair, request.link, b.nbdPort(), b.nbdPort()),
    };
    if (request.link.delayMs > 0) {
      await served.a.ferryOk(['host', 'rm', 'b']);
      const url = `http://${routes.api.host}:${routes.api.port}`;
      await served.a.ferryOk(['host', 'add', 'b', url, '--key-file', served.keyFile]);
    }
    return await body(served, routes);
  } catch (error) {
    throw new Error(`Ferry over ${describeLink(request.link)}: ${(error as Error).message}`, {
      cause: error,
    });
  } finally {
    await routes?.api.close();
    await routes?.nbd.close();
    await served.a.serve.kill('SIGKILL');
    await served.b.serve.kill('SIGKILL');
    await rm(served.a.dataDir, { recursive: true, force: true });
    await rm(served.b.dataDir, { recursive: true, force: true });
  }
}

/** Copies the source into A's data dir and imports it as disk vm1 (an import moves the file). */
async function importSource(a: ServedHost, sourcePath: string): Promise<void> {
  const image = join(a.dataDir, 'bench-source.raw');
  await copyFile(sourcePath, image);
  await a.ferryOk(['disk', 'import', 'vm1', image]);
}

async function move(a: ServedHost, extra: readonly string[]): Promise<MoveJob> {
  const out = await a.ferryOk(['migrate', 'vm1', '--to-host', 'b', ...extra], 3_600_000);
  return JSON.parse(out) as MoveJob;
}

async function nbdCopy(
  served: ServedPair,
  routes: Routes,
  request: FerryIdleCopyRequest,
): Promise<number> {
  await served.b.ferryOk(['disk', 'create', 'bench', '--size', String(request.sizeBytes)]);
  const args = [
    FERRY_NBD_COPY,
    '--source',
    request.sourcePath,
    '--host',
    routes.nbd.host,
    '--port',
    String(routes.nbd.port),
    '--export',
    'bench',
    ...(request.isTls ? ['--psk', served.keyFile] : []),
  ];
  const result = await served.a.host.exec(process.execPath, args, { timeoutMs: request.timeoutMs });
  if (result.code !== 0) throw new Error(`ferry-nbd-copy: ${result.stderr}`);
  return (JSON.parse(result.stdout) as { ms: number }).ms;
}

function fioArgs(
  uri: string,
  sizeBytes: number,
  seconds: number,
  rateIops: number | null,
): string[] {
  return [
    ...(rateIops === null ? [] : [`--rate_iops=${rateIops}`]),
    '--name=guest',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randwrite',
    '--bs=4096',
    '--iodepth=16',
    `--size=${sizeBytes}`,
    '--time_based=1',
    `--runtime=${seconds}`,
    '--norandommap=1',
    '--randrepeat=0',
    '--output-format=json',
  ];
}
