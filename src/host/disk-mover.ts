import { randomUUID } from 'node:crypto';
import { unlink } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';
import { createRawImage, openRawFile, type RawFileDevice } from '../block/raw-file.js';
import { Stats } from '../block/stats.js';
import { FileCopyOffload } from '../migrate/copy-offload.js';
import type { CopyState } from '../migrate/copy-state.js';
import { MigrateErrorCode } from '../migrate/errors.js';
import {
  METHOD_TUNING_DEFAULT,
  type MethodName,
  type MethodTuning,
  type Scratch,
} from '../migrate/method.js';
import { Migration, type MigrationEvent, type MigrationResult } from '../migrate/migration.js';
import { assert } from '../util/assert.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { CommitMark } from './commit-mark.js';
import { CopyStateFile } from './copy-state-file.js';
import type { Datastore } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import type { DiskStack } from './disk-stack.js';
import { HostError, HostErrorCode } from './errors.js';
import type { DiskEntry, ExportTable } from './export-table.js';
import { JOURNAL_VERSION, type MoveJournal, type MoveRecord } from './move-journal.js';
import {
  copyHome,
  homeMovePath,
  homePath,
  pathIsDirectory,
  placeHome,
  removeHome,
} from './vm-home.js';

/**
 * Moves served disks — one disk, or every disk of a VM with its home directory — to another
 * datastore of this agent, live (issue 3). The order of durable steps is what makes a crash at
 * any point recoverable (recovery in move-recovery.ts):
 *
 *   1. journal record, `committed: false` (names every destination image; later also each redo
 *      log, before creating it)
 *   2. a VM's home directory copied, every file fsynced, under a temporary name at the destination
 *   3. destination images created empty, no descriptors: not disks yet
 *   4. one migration over all the disks: copy while the guest writes through the sources; once
 *      all are in step, every destination descriptor written with generation + 1 (still not the
 *      authority: the journal says uncommitted)
 *   5. COMMIT, guest held on every disk: the home renamed into place, then the move's commit
 *      mark set (commit-mark.ts; the journal reads it as `committed: true`) — that one write is
 *      the commit point, so the disks switch together or not at all
 *   6. guest released on the destinations; tombstones at the sources naming the destination
 *   7. source descriptors, images and tombstones deleted, then the old home; journal deleted
 *
 * Before the flag the sources are the authority and a failure (or cancel) deletes what 1–5 made,
 * descriptors already written included; after it the destinations are, whatever fails later.
 * The source home is deleted only after the destination is committed and serving.
 */
export interface MoveSpec {
  /** The disks to move, in the order their methods converge. */
  readonly entries: readonly DiskEntry[];
  readonly to: Datastore;
  /** For a VM move: the VM's name and the datastore its home directory is in now. */
  readonly home?: { readonly vm: string; readonly from: Datastore };
  readonly method: MethodName;
  readonly speedBytesPerSecond: number;
  /** Provisioning of the destination images; default: each source's. */
  readonly provisioning?: DiskDescriptor['provisioning'];
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
/**
 * The destination's side of a cross-host move (issue 7): right after the receiver made its
 * descriptor durable, before it answers the source, which then cannot learn the outcome.
 */
export const RECEIVE_CRASH_POINTS = ['receive-commit'] as const;
/**
 * A local move (issue 10): just after the guest resumes on the destination, before the sources
 * are buried, once the guest has had `AFTER_RELEASE_MS` to write there.
 */
export const RELEASE_CRASH_POINTS = ['after-release'] as const;
const AFTER_RELEASE_MS = 300;
/** A VM's move to another host (issue 8): once QEMU has started sending the memory. */
export const VM_CRASH_POINTS = ['memory'] as const;
export type CrashPoint =
  | (typeof CRASH_POINTS)[number]
  | (typeof RECEIVE_CRASH_POINTS)[number]
  | (typeof RELEASE_CRASH_POINTS)[number]
  | (typeof VM_CRASH_POINTS)[number];

export interface PreparedMove {
  readonly id: string;
  readonly migration: Migration;
  /** Runs the migration and the cleanup; settles when the move is finished either way. */
  run(): Promise<MigrationResult>;
}

/** One disk's destination, created at step 3. */
interface MoveTarget {
  readonly entry: DiskEntry;
  /** The descriptor to commit (generation still the source's). */
  readonly descriptor: DiskDescriptor;
  readonly device: RawFileDevice;
  readonly stats: Stats;
  /** Thick, but created thin: allocated once the copy is done (before the stun). */
  readonly isAllocationDeferred: boolean;
  /**
   * The probe cloned a block from the source's file system into the destination's: the copy
   * starts with reflinks (and their large chunks). Otherwise it never tries one: a first chunk
   * sized for a reflink but copied byte by byte would hold guest writes for its whole copy.
   */
  readonly isSharingExtents: boolean;
}

/** Steps 1–3, and the migration ready to run. On failure nothing is left behind. */
export async function prepareMove(
  host: MoverHost,
  spec: MoveSpec,
  onEvent: (event: MigrationEvent) => void,
): Promise<PreparedMove> {
  const { to, home } = spec;
  const record = newRecord(spec);
  await to.checkAvailable();
  if (home !== undefined && (await pathIsDirectory(homePath(to, home.vm)))) {
    throw new HostError(
      HostErrorCode.Exists,
      `datastore ${to.name} already holds a directory ${home.vm}; a VM home cannot move there`,
    );
  }
  await host.journal.write(record);
  const targets: MoveTarget[] = [];
  const created: DiskDescriptor[] = [];
  let mark: CommitMark | undefined;
  try {
    mark = await host.journal.createCommitMark(record.id);
    if (home !== undefined) {
      await copyHome(homePath(home.from, home.vm), homeMovePath(to, home.vm));
    }
    for (const entry of spec.entries) {
      const provisioning = spec.provisioning ?? entry.descriptor.provisioning;
      const createdAtMs = performance.now();
      // Where the two datastores share extents, the copy is reflinks: a thick destination
      // allocated now would only have its blocks replaced by the source's, needing the disk's
      // size in free space for nothing. It is allocated after the copy instead, where holes remain.
      const isSharingExtents = await sharesExtents(entry.stack.raw, to);
      const isAllocationDeferred = provisioning === 'thick' && isSharingExtents;
      const descriptor = await to.createMoveTarget(entry.descriptor, provisioning, {
        isAllocationDeferred,
      });
      onEvent({
        type: 'cost',
        part: 'destination image',
        ms: elapsedMs(createdAtMs),
        detail:
          `${provisioning}${isAllocationDeferred ? ' (allocated after the copy: reflinks)' : ''}, ` +
          entry.descriptor.name,
      });
      created.push(descriptor);
      const device = await openRawFile(to.imagePath(descriptor), { provisioning });
      targets.push({
        entry,
        descriptor,
        device,
        stats: new Stats(device),
        isAllocationDeferred,
        isSharingExtents,
      });
    }
  } catch (error) {
    for (const target of targets) await target.device.close().catch(() => undefined);
    for (const descriptor of created) await to.removeFile(descriptor.image).catch(() => undefined);
    if (home !== undefined) await removeHome(homeMovePath(to, home.vm)).catch(() => undefined);
    await mark?.close();
    await host.journal.remove(record.id);
    throw error;
  }
  let file: CopyStateFile;
  try {
    file = await CopyStateFile.create(
      host.journal.copyStatePathOf(record.id),
      targets.map(({ descriptor }) => ({
        disk: descriptor.name,
        provisioning: descriptor.provisioning,
        sizeBytes: descriptor.sizeBytes,
      })),
      copiedGranuleOf(spec),
    );
  } catch (error) {
    await discardPrepared(host, spec, record, targets, mark);
    throw error;
  }
  const move = new MoveRun(host, spec, record, targets, mark, file, false, onEvent);
  return { id: record.id, migration: move.migration, run: () => move.run() };
}

/** The copy granule of a move's persisted state: the methods' tracking granule. */
export function copiedGranuleOf(spec: { readonly tuning?: Partial<MethodTuning> }): number {
  return spec.tuning?.granularityBytes ?? METHOD_TUNING_DEFAULT.granularityBytes;
}

async function discardPrepared(
  host: MoverHost,
  spec: MoveSpec,
  record: MoveRecord,
  targets: readonly MoveTarget[],
  mark: CommitMark,
): Promise<void> {
  for (const target of targets) await target.device.close().catch(() => undefined);
  for (const { descriptor } of targets) {
    await spec.to.removeFile(descriptor.image).catch(() => undefined);
  }
  if (spec.home !== undefined) {
    await removeHome(homeMovePath(spec.to, spec.home.vm)).catch(() => undefined);
  }
  await mark.close();
  await host.journal.remove(record.id);
}

/**
 * A local move a crash interrupted before its commit, continued (issue 10): recovery kept its
 * record, destination images and copy state (move-recovery.ts); the disks are served from their
 * sources with the state's write-intent filter. The same steps as a fresh move from step 4, with
 * the first copy pass limited to what the state does not vouch for (copy-state.ts). A VM's home
 * is copied again (recovery dropped the partial copy: small files).
 */
export async function prepareResumedMove(
  host: MoverHost,
  spec: MoveSpec,
  record: MoveRecord,
  file: CopyStateFile,
  onEvent: (event: MigrationEvent) => void,
): Promise<PreparedMove> {
  const { to, home } = spec;
  await to.checkAvailable();
  const targets: MoveTarget[] = [];
  const mark = await host.journal.createCommitMark(record.id);
  try {
    if (home !== undefined) {
      await removeHome(homeMovePath(to, home.vm));
      await copyHome(homePath(home.from, home.vm), homeMovePath(to, home.vm));
    }
    for (const entry of spec.entries) {
      const name = entry.descriptor.name;
      const saved = file.disks.find((each) => each.disk === name);
      const disk = record.disks.find((each) => each.disk === name);
      assert(saved !== undefined && disk !== undefined, `move ${record.id} has no disk ${name}`);
      const descriptor = {
        ...entry.descriptor,
        provisioning: saved.provisioning,
        image: disk.image,
      };
      const device = await openRawFile(to.imagePath(descriptor), {
        provisioning: saved.provisioning,
      });
      targets.push({
        entry,
        descriptor,
        device,
        stats: new Stats(device),
        // A thick image the first run deferred may still have holes: `allocate` fills only those.
        isAllocationDeferred: saved.provisioning === 'thick',
        isSharingExtents: false,
      });
    }
  } catch (error) {
    for (const target of targets) await target.device.close().catch(() => undefined);
    await mark.close();
    throw error;
  }
  const move = new MoveRun(host, spec, record, targets, mark, file, true, onEvent);
  return { id: record.id, migration: move.migration, run: () => move.run() };
}

/** The test seam: kills the agent (SIGKILL) when `point` is the one FERRY_CRASH_AT names. */
export function crashIf(host: MoverHost, move: string, point: CrashPoint): void {
  if (host.crashAt !== point) return;
  host.log.error({ move, point }, `crash point ${point}: killing the agent`);
  process.kill(process.pid, 'SIGKILL');
}

/**
 * Runs a move's migration and settles a failure by who is the authority: before the commit the
 * mover's `discard` drops the destination (the migration has put the guest back on the source);
 * an unknown outcome leaves everything as it is, for the next start to ask; after the commit the
 * destination is the disk, and the failure is only logged and passed on.
 */
export async function runMove(
  host: MoverHost,
  move: string,
  migration: Migration,
  settle: { readonly isCommitted: () => boolean; readonly discard: () => Promise<void> },
  copyState?: { readonly isCopyPersisted: boolean },
): Promise<MigrationResult> {
  try {
    return await runWithCrashSeam(host, move, migration, copyState);
  } catch (error) {
    if (errorCodeOf(error) === MigrateErrorCode.CommitUnknown) throw error;
    if (!settle.isCommitted()) {
      await settle.discard();
      throw error;
    }
    host.log.error({ move, err: error }, 'failure after the commit');
    throw error;
  }
}

/**
 * Runs `migration`; with the seam at `copy`, the agent dies half-way through the copy. A move
 * with a copy state dies only once a checkpoint has persisted some of the copy (or the copy is
 * whole: a reflink copies a small disk before the first checkpoint), so the resume it tests has
 * something to start from: sxm counts the granules the guest's mirrored writes place as progress,
 * and a guest writing fast took it past half-way before the first checkpoint.
 */
export async function runWithCrashSeam(
  host: MoverHost,
  move: string,
  migration: Migration,
  copyState?: { readonly isCopyPersisted: boolean },
): Promise<MigrationResult> {
  const halfway =
    host.crashAt === 'copy'
      ? setInterval(() => {
          const { doneBytes, totalBytes } = migration.progressSnapshot;
          const isPersisted = copyState === undefined || copyState.isCopyPersisted;
          if (doneBytes >= totalBytes || (doneBytes * 2 >= totalBytes && isPersisted)) {
            crashIf(host, move, 'copy');
          }
        }, 5)
      : undefined;
  try {
    return await migration.run();
  } finally {
    clearInterval(halfway);
  }
}

function newRecord(spec: MoveSpec): MoveRecord {
  return {
    version: JOURNAL_VERSION,
    id: randomUUID().slice(0, 8),
    vm: spec.home?.vm ?? null,
    homeFrom: spec.home?.from.name ?? null,
    to: spec.to.name,
    disks: spec.entries.map(({ descriptor, datastore }) => ({
      disk: descriptor.name,
      from: datastore.name,
      generation: descriptor.generation,
      sourceImage: descriptor.image,
      image: `${descriptor.name}.raw`,
      redoLogs: [],
    })),
    committed: false,
    method: spec.method,
    startedAt: new Date().toISOString(),
  };
}

class MoveRun {
  readonly migration: Migration;
  private record: MoveRecord;
  private readonly label: string;
  private isCommitted = false;
  /** Destination descriptors written so far in a commit that may yet fail. */
  private readonly written: string[] = [];
  private isHomePlaced = false;

  constructor(
    private readonly host: MoverHost,
    private readonly spec: MoveSpec,
    record: MoveRecord,
    private readonly targets: readonly MoveTarget[],
    private readonly mark: CommitMark,
    private readonly file: CopyStateFile,
    isResumed: boolean,
    private readonly onEvent: (event: MigrationEvent) => void,
  ) {
    this.record = record;
    this.label = spec.home ? `VM ${spec.home.vm}` : `disk ${record.disks[0]?.disk}`;
    this.migration = new Migration(
      targets.map((target, index) => ({
        name: target.descriptor.name,
        switch: target.entry.stack.top,
        source: target.entry.stack.stats,
        copySource: target.entry.stack.raw,
        target: target.device,
        targetTop: target.stats,
        createScratch: (label: string) => this.createRedoLog(index, label),
        offload: new FileCopyOffload(target.entry.stack.raw, target.device, {
          isReflinkAllowed: target.isSharingExtents,
        }),
        ...withCopyState(file, target.descriptor.name, isResumed),
      })),
      {
        method: spec.method,
        speedBytesPerSecond: spec.speedBytesPerSecond,
        ...(spec.tuning === undefined ? {} : { tuning: spec.tuning }),
        ...(spec.chunkBytes === undefined ? {} : { chunkBytes: spec.chunkBytes }),
        beforeSwitchover: () => this.writeDescriptors(),
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
    // Committed, then something failed (only the release can): the destination is the disk.
    const result = await runMove(
      this.host,
      this.record.id,
      this.migration,
      { isCommitted: () => this.isCommitted, discard: () => this.discardTargets() },
      this.file,
    );
    if (this.host.crashAt === 'after-release') {
      await new Promise((resolve) => setTimeout(resolve, AFTER_RELEASE_MS));
      this.crashIf('after-release');
    }
    await this.finish();
    return result;
  }

  private crashIf(point: CrashPoint): void {
    crashIf(this.host, this.record.id, point);
  }

  /**
   * Step 5a, while the guest still runs: every destination descriptor one generation up,
   * durable. They are not the authority yet: until the journal's commit flag, a restart rolls
   * back to the sources and deletes them (move-recovery.ts), as it did when they were written
   * inside the stun. Out of the stun, their fsyncs no longer count in the guest's pause.
   */
  private async writeDescriptors(): Promise<void> {
    for (const target of this.targets) {
      if (!target.isAllocationDeferred) continue;
      const allocatingAtMs = performance.now();
      await target.device.allocate();
      this.onEvent({
        type: 'cost',
        part: 'thick allocation',
        ms: elapsedMs(allocatingAtMs),
        detail: target.descriptor.name,
      });
    }
    const startedAtMs = performance.now();
    for (const target of this.targets) {
      const { descriptor } = target;
      this.written.push(descriptor.name);
      await this.spec.to.commitDescriptor({ ...descriptor, generation: descriptor.generation + 1 });
    }
    this.onEvent({ type: 'cost', part: 'destination descriptors', ms: elapsedMs(startedAtMs) });
  }

  /**
   * Step 5b, in the stun: the home in place, then the journal's commit mark — the one write
   * (a sector in place, one fdatasync: commit-mark.ts) that makes every destination the
   * authority at once.
   */
  private async commit(): Promise<void> {
    const { to, home } = this.spec;
    this.crashIf('before-commit');
    if (home !== undefined) {
      await placeHome(homeMovePath(to, home.vm), homePath(to, home.vm));
      this.isHomePlaced = true;
    }
    await this.mark.set();
    this.record = { ...this.record, committed: true };
    this.isCommitted = true;
    this.crashIf('after-commit');
  }

  /** Steps 6–7: serve the destinations in the table, bury and delete the sources. */
  private async finish(): Promise<void> {
    const startedAtMs = performance.now();
    const { to, home } = this.spec;
    const { exports, log, journal } = this.host;
    const moved = this.targets.map(({ entry, descriptor, device, stats }) => {
      const committed = { ...descriptor, generation: descriptor.generation + 1 };
      exports.delete(entry.descriptor.name);
      const stack: DiskStack = { raw: device, stats, top: entry.stack.top };
      exports.add(committed, to, stack);
      return { entry, committed };
    });
    for (const { entry, committed } of moved) {
      const from = entry.datastore;
      const { name, generation } = committed;
      await from.writeTombstone({ name, datastore: to.name, generation });
      await entry.stack.raw.close().catch((error: unknown) => {
        log.warn({ disk: name, err: error }, 'closing the old source image failed');
      });
      const leftover = await from.removeDisk(entry.descriptor, { isImageInBackground: true });
      if (leftover) log.warn({ disk: name, file: leftover.file }, leftover.message);
      await from.removeTombstone(name);
      log.info({ disk: name, from: from.name, to: to.name, generation }, 'disk moved');
    }
    for (const disk of this.record.disks) {
      for (const redoLog of disk.redoLogs) await to.removeFile(redoLog);
    }
    if (home !== undefined) await removeHome(homePath(home.from, home.vm));
    await this.mark.close();
    await this.file.remove();
    await journal.remove(this.record.id);
    this.onEvent({ type: 'cost', part: 'source deletion', ms: elapsedMs(startedAtMs) });
    log.info({ move: this.record.id, to: to.name }, `${this.label} moved`);
  }

  /**
   * Before the commit flag, on failure or cancel: the guest is back on the sources; drop every
   * copy, including descriptors and the home a failed commit already put in place.
   */
  private async discardTargets(): Promise<void> {
    const { to, home } = this.spec;
    try {
      for (const target of this.targets) await target.device.close().catch(() => undefined);
      for (const name of this.written) await to.removeDescriptor(name);
      for (const disk of this.record.disks) {
        await to.removeFile(disk.image);
        for (const redoLog of disk.redoLogs) await to.removeFile(redoLog);
      }
      if (home !== undefined) {
        await removeHome(homeMovePath(to, home.vm));
        if (this.isHomePlaced) await removeHome(homePath(to, home.vm));
      }
      await this.mark.close();
      await this.file.remove();
      await this.host.journal.remove(this.record.id);
    } catch (error) {
      // The journal stays: the next start finishes the cleanup.
      this.host.log.warn(
        { move: this.record.id, err: error },
        `the cancelled move's destination could not be removed yet: ${errorMessageOf(error)}`,
      );
    }
  }

  /** A redo log for the snapshot method: journaled before it exists, so recovery finds it. */
  private async createRedoLog(index: number, label: string): Promise<Scratch> {
    const { to } = this.spec;
    const disk = this.record.disks[index];
    const target = this.targets[index];
    assert(disk !== undefined && target !== undefined, `no disk ${index} in this move`);
    const fileName = to.redoLogName(disk.disk, disk.redoLogs.length + 1);
    const disks = this.record.disks.map((each, at) =>
      at === index ? { ...each, redoLogs: [...each.redoLogs, fileName] } : each,
    );
    this.record = { ...this.record, disks };
    await this.host.journal.write(this.record);
    const path = `${to.path}/${fileName}`;
    await createRawImage(path, target.device.size, 'thin');
    const device = await openRawFile(path, { provisioning: 'thin' });
    this.host.log.debug({ disk: disk.disk, file: fileName, label }, 'redo log created');
    return {
      device,
      // The file itself stays until the move is finished or discarded: recovery after a crash
      // in the middle of a rollback still needs every log.
      remove: () => device.close(),
    };
  }
}

/**
 * Whether `to` can share `source`'s extents: one block cloned into a scratch file there (never
 * into the destination, whose fresh ranges the copier trusts to read as zeros), then deleted.
 */
async function sharesExtents(source: RawFileDevice, to: Datastore): Promise<boolean> {
  const probeBytes = Math.min(PROBE_BYTES, source.size);
  if (probeBytes % PROBE_BYTES !== 0) return false;
  const path = to.garbagePath('reflink-probe');
  try {
    await createRawImage(path, probeBytes, 'thin');
    const probe = await openRawFile(path, { provisioning: 'thin' });
    try {
      return await source.cloneRangeTo(probe, 0, probeBytes);
    } finally {
      await probe.close();
    }
  } catch {
    return false;
  } finally {
    await unlink(path).catch(() => undefined);
  }
}

/** One file-system block: what the reflink probe clones. */
const PROBE_BYTES = 4096;

function withCopyState(
  file: CopyStateFile,
  disk: string,
  isResumed: boolean,
): { copyState?: CopyState; isResumed?: boolean } {
  const copyState = file.stateOf(disk);
  return copyState === undefined ? {} : { copyState, isResumed };
}

/** Milliseconds since `startedAtMs`, to two decimals, for a `cost` event. */
function elapsedMs(startedAtMs: number): number {
  return Math.round((performance.now() - startedAtMs) * 100) / 100;
}
