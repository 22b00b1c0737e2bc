import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { formatTable } from '../cli/table.js';
import { Agent } from '../host/index.js';
import type { MethodName } from '../migrate/method.js';
import { NbdClient, NbdServer } from '../nbd/index.js';
import { errorMessageOf } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import { DemoGuest } from './demo-guest.js';

/**
 * `ferry demo`: the whole product in one command, on the embedded default. An agent with two
 * datastores and a disk served over real NBD (TCP, ephemeral port); a guest-like writer on that
 * connection; then the disk is migrated live with each method in turn, back and forth between the
 * datastores. After each move the writer pauses and the disk is compared byte for byte with what
 * the writer was acknowledged, through NBD and directly in the destination image.
 */
export interface DemoOptions {
  /** State directory; default a fresh temporary one, removed at the end. */
  readonly dataDir?: string;
  readonly sizeBytes: number;
  readonly methods: readonly MethodName[];
  /** Guest writes in flight. */
  readonly depth: number;
  /** How long the guest runs before each migration, for its baseline IOPS. */
  readonly baselineMs: number;
  readonly json: boolean;
  readonly keep: boolean;
}

export interface DemoRow {
  readonly method: MethodName;
  readonly from: string;
  readonly to: string;
  readonly migrationMs: number;
  readonly downtimeMs: number;
  readonly iopsBefore: number;
  readonly iopsDuring: number;
  readonly slowestWriteMs: number;
  readonly bytesCopied: number;
  readonly passes: number;
  readonly isVerified: boolean;
  readonly problem: string | null;
}

const DISK = 'demo';

export async function demo(options: DemoOptions, print: (text: string) => void): Promise<number> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'ferry-demo-')));
  const agent = await Agent.open({ dataDir });
  const server = new NbdServer({ exports: agent.exports });
  let client: NbdClient | undefined;
  try {
    await mkdir(join(dataDir, 'fast'), { recursive: true });
    await agent.addDatastore('fast', join(dataDir, 'fast'));
    await agent.createDisk({ name: DISK, sizeBytes: options.sizeBytes });
    const { port } = await server.listenTcp('127.0.0.1', 0);
    client = await NbdClient.connect({ exportName: DISK, host: '127.0.0.1', port });
    const guest = new DemoGuest(client, options.depth);
    if (!options.json) {
      print(
        `Ferry demo: disk ${DISK} (${formatSize(options.sizeBytes)} thin) at nbd://127.0.0.1:${port}/${DISK}, ` +
          `a guest writing 4K blocks at queue depth ${options.depth}; state in ${dataDir}\n`,
      );
    }
    await guest.fillSome(options.sizeBytes);
    const rows: DemoRow[] = [];
    for (const method of options.methods) {
      const row = await migrateOnce(agent, guest, method, options);
      rows.push(row);
      if (!options.json) print(describeRow(row));
    }
    if (options.json) print(JSON.stringify({ dataDir, rows }, null, 2));
    else print(`\n${renderTable(rows)}`);
    return rows.every((row) => row.isVerified) ? 0 : 1;
  } finally {
    await client?.close().catch(() => undefined);
    await server.close();
    await agent.close();
    if (!options.keep && options.dataDir === undefined)
      await rm(dataDir, { recursive: true, force: true });
  }
}

/** One live migration to the other datastore, measured and verified. */
async function migrateOnce(
  agent: Agent,
  guest: DemoGuest,
  method: MethodName,
  options: DemoOptions,
): Promise<DemoRow> {
  const from = (await agent.getDisk(DISK)).datastore;
  const to = from === 'local' ? 'fast' : 'local';
  guest.start();
  guest.takeWindow();
  const baselineStartMs = performance.now();
  await new Promise((resolve) => setTimeout(resolve, options.baselineMs));
  const before = guest.takeWindow();
  const iopsBefore = (before.writes * 1000) / (performance.now() - baselineStartMs);
  const startedMs = performance.now();
  let problem: string | null = null;
  let result: Awaited<Awaited<ReturnType<Agent['moveDisk']>>['done']> | undefined;
  try {
    const move = await agent.moveDisk({ name: DISK, datastore: to, method }, () => {});
    result = await move.done;
  } catch (error) {
    problem = errorMessageOf(error);
  }
  const migrationMs = performance.now() - startedMs;
  const during = guest.takeWindow();
  await guest.stop();
  const verified = problem === null ? await verify(agent, guest) : null;
  return {
    method,
    from,
    to,
    migrationMs: Math.round(migrationMs),
    downtimeMs: result?.downtimeMs ?? 0,
    iopsBefore: Math.round(iopsBefore),
    iopsDuring: Math.round((during.writes * 1000) / migrationMs),
    slowestWriteMs: during.slowestMs,
    bytesCopied: result?.bytesCopied ?? 0,
    passes: result?.passes ?? 0,
    isVerified: verified === null && problem === null,
    problem: problem ?? verified,
  };
}

/** Null when the disk holds every acknowledged write, through NBD and in its image file. */
async function verify(agent: Agent, guest: DemoGuest): Promise<string | null> {
  const entry = agent.exports.get(DISK);
  if (!entry) return 'the disk is no longer served';
  const served = await entry.export.device.read(0, guest.model.length);
  if (!served.equals(guest.model)) return 'the disk as served differs from what the guest wrote';
  const image = await readFile((await agent.getDisk(DISK)).image);
  if (!image.equals(guest.model)) return 'the destination image differs from what the guest wrote';
  return null;
}

function describeRow(row: DemoRow): string {
  if (row.problem !== null) return `${row.method}: ${row.from} → ${row.to} FAILED: ${row.problem}`;
  return (
    `${row.method}: ${row.from} → ${row.to} in ${row.migrationMs} ms, downtime ${row.downtimeMs.toFixed(1)} ms, ` +
    `guest ${row.iopsBefore} → ${row.iopsDuring} IOPS, every acknowledged write verified`
  );
}

function renderTable(rows: readonly DemoRow[]): string {
  return formatTable(
    [
      { header: 'method', value: (row: DemoRow) => row.method },
      { header: 'move', value: (row) => `${row.from} → ${row.to}` },
      {
        header: 'time',
        value: (row) => `${(row.migrationMs / 1000).toFixed(2)} s`,
        align: 'right',
      },
      { header: 'downtime', value: (row) => `${row.downtimeMs.toFixed(1)} ms`, align: 'right' },
      { header: 'IOPS before', value: (row) => String(row.iopsBefore), align: 'right' },
      { header: 'IOPS during', value: (row) => String(row.iopsDuring), align: 'right' },
      {
        header: 'slowest write',
        value: (row) => `${row.slowestWriteMs.toFixed(1)} ms`,
        align: 'right',
      },
      { header: 'copied', value: (row) => formatSize(row.bytesCopied), align: 'right' },
      { header: 'passes', value: (row) => String(row.passes), align: 'right' },
      { header: 'integrity', value: (row) => (row.isVerified ? 'verified' : 'FAILED') },
    ],
    rows,
  );
}
