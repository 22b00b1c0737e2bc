import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  type Child,
  freePort,
  runCommand,
  spawnChild,
  stopChild,
  waitForPort,
} from './children.js';
import { QmpClient } from './migrate-qmp.js';

/**
 * QEMU's live storage migration, the reference for Ferry's methods under load: a
 * qemu-storage-daemon serves the source image as a writable NBD export (the "guest" is fio
 * through it) and takes QMP on a Unix socket; `blockdev-mirror` copies to a target node, and
 * `block-job-complete` pivots: the export's node is replaced by the target in the graph, and the
 * guest's connection follows without noticing, apart from the stall.
 *
 *   blockdev-add target → blockdev-mirror (sync full, copy-mode background | write-blocking)
 *   → BLOCK_JOB_READY → block-job-complete → BLOCK_JOB_COMPLETED
 */
export type QemuCopyMode = 'background' | 'write-blocking';

export interface QemuMirrorOutcome {
  /** Date.now() when blockdev-mirror was sent, and when BLOCK_JOB_COMPLETED arrived. */
  readonly startedAtMs: number;
  readonly finishedAtMs: number;
  readonly durationMs: number;
  /** When block-job-complete (the pivot) was sent; the stall lies between it and the end. */
  readonly pivotAtMs: number;
  /** Bytes the job reported copying (its final `offset`). */
  readonly bytesCopied: number;
}

export interface QemuExport {
  /** `nbd://127.0.0.1:PORT/bench`. */
  readonly uri: string;
  /**
   * Mirrors the export's node to a new image at `targetPath` (created here, preallocated like
   * Ferry's thick destination) and pivots to it; fails if it takes longer than `timeoutMs`.
   */
  mirror(targetPath: string, mode: QemuCopyMode, timeoutMs: number): Promise<QemuMirrorOutcome>;
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 30_000;
const JOB_ID = 'bench-mirror';

/** Starts a qemu-storage-daemon serving `sourcePath` (raw, page cache) as export `bench`. */
export async function startQemuExport(
  sourcePath: string,
  sizeBytes: number,
  dir: string,
): Promise<QemuExport> {
  const port = await freePort();
  const monitorPath = join(dir, `qmp-${port}.sock`);
  const child = spawnChild('qemu-storage-daemon', 'qemu-storage-daemon', [
    '--blockdev',
    `driver=file,node-name=source-file,filename=${sourcePath},cache.direct=off`,
    '--blockdev',
    'driver=raw,node-name=source,file=source-file',
    '--nbd-server',
    `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
    '--export',
    'type=nbd,id=bench-export,node-name=source,name=bench,writable=on',
    '--chardev',
    `socket,id=monitor,path=${monitorPath},server=on,wait=off`,
    '--monitor',
    'chardev=monitor',
  ]);
  let qmp: QmpClient | undefined;
  try {
    await waitForPort(child, port, START_TIMEOUT_MS);
    qmp = await QmpClient.connect(monitorPath, START_TIMEOUT_MS);
  } catch (error) {
    await stopChild(child);
    throw error;
  }
  const monitor = qmp;
  return {
    uri: `nbd://127.0.0.1:${port}/bench`,
    mirror: (targetPath, mode, timeoutMs) =>
      mirrorTo(monitor, child, { targetPath, sizeBytes, mode, timeoutMs }),
    stop: async () => {
      monitor.close();
      await stopChild(child);
      await rm(monitorPath, { force: true });
    },
  };
}

interface MirrorSpec {
  readonly targetPath: string;
  readonly sizeBytes: number;
  readonly mode: QemuCopyMode;
  readonly timeoutMs: number;
}

async function mirrorTo(
  qmp: QmpClient,
  child: Child,
  spec: MirrorSpec,
): Promise<QemuMirrorOutcome> {
  const deadline = Date.now() + spec.timeoutMs;
  const left = (): number => deadline - Date.now();
  await runCommand(
    'qemu-img create',
    'qemu-img',
    [
      'create',
      '-q',
      '-f',
      'raw',
      '-o',
      'preallocation=falloc',
      spec.targetPath,
      String(spec.sizeBytes),
    ],
    { timeoutMs: left() },
  );
  await qmp.execute('blockdev-add', {
    driver: 'raw',
    'node-name': 'target',
    file: { driver: 'file', filename: spec.targetPath, cache: { direct: false } },
  });
  const isOurs = (data: Record<string, unknown>): boolean => data.device === JOB_ID;
  const from = qmp.events.length;
  const startedAtMs = Date.now();
  await qmp.execute('blockdev-mirror', {
    'job-id': JOB_ID,
    device: 'source',
    target: 'target',
    sync: 'full',
    'copy-mode': spec.mode,
  });
  try {
    await qmp.waitEvent('BLOCK_JOB_READY', isOurs, from, left());
    const pivotAtMs = Date.now();
    await qmp.execute('block-job-complete', { device: JOB_ID });
    const completed = await qmp.waitEvent('BLOCK_JOB_COMPLETED', isOurs, from, left());
    if (typeof completed.data.error === 'string') {
      throw new Error(`QEMU mirror failed: ${completed.data.error}`);
    }
    const bytesCopied = typeof completed.data.offset === 'number' ? completed.data.offset : 0;
    const finishedAtMs = completed.atMs;
    return {
      startedAtMs,
      finishedAtMs,
      durationMs: finishedAtMs - startedAtMs,
      pivotAtMs,
      bytesCopied,
    };
  } catch (error) {
    throw new Error(`QEMU mirror (${spec.mode}) to ${spec.targetPath}:\n${child.output()}`, {
      cause: error,
    });
  }
}
