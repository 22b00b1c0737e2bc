import { randomUUID } from 'node:crypto';
import { createRawImage, openRawFile, type RawFileDevice } from '../block/raw-file.js';
import { Stats } from '../block/stats.js';
import type { MethodName, MethodTuning, Scratch } from '../migrate/method.js';
import { Migration, type MigrationEvent, type MigrationResult } from '../migrate/migration.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Datastore } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import type { DiskStack } from './disk-stack.js';
import type { DiskEntry, ExportTable } from './export-table.js';
import { JOURNAL_VERSION, type MoveJournal, type MoveRecord } from './move-journal.js';

/**
 * Moves one served disk to another datastore of this agent, live (issue 3). The order of durable
 * steps is what makes a crash at any point recoverable (recovery in move-recovery.ts):
 *
 *   1. journal record (names the destination image; later also each redo log, before creating it)
 *   2. destination image created empty, no descriptor: not a disk yet
 *   3. migration: copy while the guest writes through the source (migrate/)
 *   4. COMMIT, guest held: destination descriptor written with generation + 1
 *   5. guest released on the destination; tombstone at the source naming the destination
 *   6. source descriptor, then source image, then tombstone deleted; journal record deleted
 *
 * Before 4 the source is the authority and a failure (or cancel) deletes what 1–3 made; after 4
 * the destination is, whatever fails later.
 */
export interface MoveSpec {
  readonly entry: DiskEntry;
  readonly to: Datastore;
  readonly method: MethodName;
  readonly speedBytesPerSecond: number;
  readonly provisioning: DiskDescriptor['provisioning'];
  readonly tuning?: Partial<MethodTuning>;
  readonly chunkBytes?: number;
}

export interface MoverHost {
  readonly exports: ExportTable;
  readonly journal: MoveJournal;
  readonly log: Logger;
  /** Test seam: the agent kills itself (SIGKILL) at this point of every move. */
  readonly crashAt?: CrashPoint;
}

/**
 * Where a move can be made to die on purpose, for the crash tests (issue 3: `kill -9` in each
 * phase): half-way through the copy, in the switchover before the final copy, and right before
 * and right after the commit.
 */
export const CRASH_POINTS = ['copy', 'final-copy', 'before-commit', 'after-commit'] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export interface PreparedMove {
  readonly id: string;
  readonly migration: Migration;
  /** Runs the migration and the cleanup; settles when the move is finished either way. */
  run(): Promise<MigrationResult>;
}

/** Steps 1–2, and the migration ready to run. On failure nothing is left behind. */
export async function prepareMove(
  host: MoverHost,
  spec: MoveSpec,
  onEvent: (event: MigrationEvent) => void,
): Promise<PreparedMove> {
  const { entry, to } = spec;
  const source = entry.descriptor;
  const record: MoveRecord = {
    version: JOURNAL_VERSION,
    id: randomUUID().slice(0, 8),
    disk: source.name,
    from: entry.datastore.name,
    to: to.name,
    generation: source.generation,
    sourceImage: source.image,
    image: `${source.name}.raw`,
    redoLogs: [],
    method: spec.method,
    startedAt: new Date().toISOString(),
  };
  await to.checkAvailable();
  await host.journal.write(record);
  let target: RawFileDevice | undefined;
  let descriptor: DiskDescriptor;
  try {
    descriptor = await to.createMoveTarget(source, spec.provisioning);
    target = await openRawFile(to.imagePath(descriptor), { provisioning: spec.provisioning });
  } catch (error) {
    await target?.close().catch(() => undefined);
    await host.journal.remove(record.id);
    throw error;
  }
  const move = new DiskMoveRun(host, spec, record, descriptor, target, onEvent);
  return { id: record.id, migration: move.migration, run: () => move.run() };
}

class DiskMoveRun {
  readonly migration: Migration;
  private record: MoveRecord;
  private readonly targetStats: Stats;
  private committed: DiskDescriptor | undefined;

  constructor(
    private readonly host: MoverHost,
    private readonly spec: MoveSpec,
    record: MoveRecord,
    private readonly descriptor: DiskDescriptor,
    private readonly target: RawFileDevice,
    onEvent: (event: MigrationEvent) => void,
  ) {
    this.record = record;
    this.targetStats = new Stats(target);
    const stack = spec.entry.stack;
    this.migration = new Migration(
      [
        {
          name: record.disk,
          switch: stack.top,
          source: stack.stats,
          target,
          targetTop: this.targetStats,
          createScratch: (label) => this.createRedoLog(label),
        },
      ],
      {
        method: spec.method,
        speedBytesPerSecond: spec.speedBytesPerSecond,
        ...(spec.tuning === undefined ? {} : { tuning: spec.tuning }),
        ...(spec.chunkBytes === undefined ? {} : { chunkBytes: spec.chunkBytes }),
        commit: () => this.commit(),
        onEvent: (event) => {
          if (event.type === 'phase' && event.phase === 'switchover') this.crashIf('final-copy');
          onEvent(event);
        },
        log: host.log,
      },
    );
  }

  async run(): Promise<MigrationResult> {
    let result: MigrationResult;
    const halfway =
      this.host.crashAt === 'copy'
        ? setInterval(() => {
            const { doneBytes, totalBytes } = this.migration.progressSnapshot;
            if (doneBytes * 2 >= totalBytes) this.crashIf('copy');
          }, 5)
        : undefined;
    try {
      result = await this.migration.run();
    } catch (error) {
      if (this.committed === undefined) {
        await this.discardTarget();
        throw error;
      }
      // Committed, then something failed (only the release can): the destination is the disk.
      this.host.log.error({ disk: this.record.disk, err: error }, 'failure after the commit');
      throw error;
    } finally {
      clearInterval(halfway);
    }
    await this.finish();
    return result;
  }

  private crashIf(point: CrashPoint): void {
    if (this.host.crashAt !== point) return;
    this.host.log.error(
      { disk: this.record.disk, point },
      `crash point ${point}: killing the agent`,
    );
    process.kill(process.pid, 'SIGKILL');
  }

  /** Step 4: the destination's descriptor, one generation up, written atomically and durably. */
  private async commit(): Promise<void> {
    const committed: DiskDescriptor = {
      ...this.descriptor,
      generation: this.record.generation + 1,
    };
    this.crashIf('before-commit');
    await this.spec.to.commitDescriptor(committed);
    this.committed = committed;
    this.crashIf('after-commit');
  }

  /** Steps 5–6: serve the destination in the table, bury and delete the source. */
  private async finish(): Promise<void> {
    const committed = this.committed;
    if (committed === undefined) throw new Error('a move finished without a commit');
    const { entry, to } = this.spec;
    const { exports, log, journal } = this.host;
    exports.delete(entry.descriptor.name);
    const stack: DiskStack = { raw: this.target, stats: this.targetStats, top: entry.stack.top };
    exports.add(committed, to, stack);
    const from = entry.datastore;
    await from.writeTombstone({
      name: committed.name,
      datastore: to.name,
      generation: committed.generation,
    });
    await entry.stack.raw.close().catch((error: unknown) => {
      log.warn({ disk: committed.name, err: error }, 'closing the old source image failed');
    });
    const leftover = await from.removeDisk(entry.descriptor);
    if (leftover) log.warn({ disk: committed.name, file: leftover.file }, leftover.message);
    await from.removeTombstone(committed.name);
    for (const redoLog of this.record.redoLogs) await to.removeFile(redoLog);
    await journal.remove(this.record.id);
    log.info(
      { disk: committed.name, from: from.name, to: to.name, generation: committed.generation },
      'disk moved',
    );
  }

  /** Before the commit, on failure or cancel: the guest is back on the source; drop the copy. */
  private async discardTarget(): Promise<void> {
    const { to } = this.spec;
    try {
      await this.target.close().catch(() => undefined);
      await to.removeFile(this.record.image);
      for (const redoLog of this.record.redoLogs) await to.removeFile(redoLog);
      await this.host.journal.remove(this.record.id);
    } catch (error) {
      // The journal stays: the next start finishes the cleanup.
      this.host.log.warn(
        { disk: this.record.disk, err: error },
        `the cancelled move's destination could not be removed yet: ${errorMessageOf(error)}`,
      );
    }
  }

  /** A redo log for the snapshot method: journaled before it exists, so recovery finds it. */
  private async createRedoLog(label: string): Promise<Scratch> {
    const { to } = this.spec;
    const fileName = to.redoLogName(this.record.disk, this.record.redoLogs.length + 1);
    this.record = { ...this.record, redoLogs: [...this.record.redoLogs, fileName] };
    await this.host.journal.write(this.record);
    const path = `${to.path}/${fileName}`;
    await createRawImage(path, this.target.size, 'thin');
    const device = await openRawFile(path, { provisioning: 'thin' });
    this.host.log.debug({ disk: this.record.disk, file: fileName, label }, 'redo log created');
    return {
      device,
      // The file itself stays until the move is finished or discarded: recovery after a crash
      // in the middle of a rollback still needs every log.
      remove: () => device.close(),
    };
  }
}
