import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createRawImage, openRawFile, type RawFileDevice } from '../block/raw-file.js';
import type { MethodName, MethodTuning, Scratch } from '../migrate/method.js';
import { Migration, type MigrationEvent, type MigrationResult } from '../migrate/migration.js';
import { NbdClientPool } from '../nbd/client-pool.js';
import type { PskKey } from '../nbd/psk-file.js';
import { assert } from '../util/assert.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { CopyStateFile } from './copy-state-file.js';
import type { Datastore, Tombstone } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import {
  type CrashPoint,
  copiedGranuleOf,
  crashIf,
  type MoverHost,
  type PreparedMove,
  runMove,
} from './disk-mover.js';
import type { DiskEntry } from './export-table.js';
import { JOURNAL_VERSION, type MoveRecord } from './move-journal.js';
import { passThroughOf, type RemoteDevice, remoteDisk } from './pass-through.js';
import { commitAtPeer } from './peer-commit.js';
import type { ReceiveTicket } from './receiver.js';

/**
 * Moves a served disk to another host, live (issue 7; DESIGN.md, "Cross-host"). This host, the
 * source, drives; the peer's receiver (receiver.ts) creates the destination and commits it. The
 * durable steps, in order:
 *
 *   1. journal record here, `toHost` set, `commitRequested: false`
 *   2. the peer journals and creates an empty image, served to us alone as a receiving export
 *   3. one migration: the copier and the mirror write to it through our NBD client, over TLS
 *      with the pre-shared key, on several connections; the guest keeps writing the source
 *   4. switchover, guest held: final copy, flush (the peer's), then
 *      a. `commitRequested: true` journaled here — from now on only the peer knows the outcome
 *      b. the peer commits: its descriptor at generation + 1 (ITS commit point)
 *      c. `committed: true` journaled here
 *      If (b)'s answer is lost, the guest stays held and we ask the peer (`resolve`) until it
 *      answers; it never guesses (a resolve that finds no commit aborts the receive, so a late
 *      commit cannot follow).
 *   5. the guest's Switch now forwards to the peer: this host's export of the disk is a
 *      pass-through; a tombstone naming the host is written beside the old copy
 *   6. the old descriptor and image deleted (the tombstone stays: it is the pass-through's
 *      record), redo logs deleted, the peer told to finish, the journal record deleted
 *
 * Before (4b) succeeds the source is the authority and a failure rolls back to it (and the peer
 * is told to abort). After it, the peer is, whatever fails here. Recovery after a crash:
 * remote-recovery.ts.
 *
 * Over the network, the copy state (copy-state.ts) persists beside the journal record as it goes,
 * the peer's flush standing for the destination's: a source killed before (4a) whose peer still
 * has the receive resumes the move from it (`prepareResumedRemoteMove`) instead of rolling back
 * and copying everything again over the link. Over shared storage there is no state: the storage
 * path is fast, and such a move rolls back as before.
 */
export interface PeerLink {
  /** The peer's name, as this host knows it (`ferry host add NAME`). */
  readonly name: string;
  /** Where the peer's NBD server is reached (its API's host unless configured otherwise). */
  readonly nbdHost: string;
  /** The key agent-to-agent NBD connections prove over TLS. */
  readonly psk: PskKey;
  /** Calls the peer's API with this host's credential (peer-client.ts). */
  post<T>(path: string, body?: unknown, options?: { readonly timeoutMs?: number }): Promise<T>;
  /** The port of the peer's NBD server (asked of its API unless configured). */
  nbdPort(): Promise<number>;
}

export interface RemoteMoveSpec {
  readonly entry: DiskEntry;
  readonly peer: PeerLink;
  /** This host's name for itself, which the peer records. */
  readonly selfName: string;
  /** The datastore on the peer; default: the peer's default. */
  readonly datastore?: string;
  readonly method: MethodName;
  readonly speedBytesPerSecond: number;
  readonly provisioning?: DiskDescriptor['provisioning'];
  readonly tuning?: Partial<MethodTuning>;
  readonly chunkBytes?: number;
  /** NBD connections to the peer; default 4. */
  readonly connections?: number;
  /** Fires when the agent closes: a commit whose outcome is unknown stops waiting (held). */
  readonly closing: AbortSignal;
  /** This host's datastore with that identity, if it has one (shared storage). */
  readonly sharedDatastore: (id: string) => Promise<Datastore | undefined>;
}

/** The peer's answer to a receive request: the ticket and its NBD port. */
export interface ReceiveAnswer extends ReceiveTicket {
  readonly nbdPort: number;
}

const CALL_TIMEOUT_MS = 10_000;
/**
 * How often the copy state is made durable over the network: each checkpoint flushes the peer's
 * image, a round trip and an fsync there, so less often than on one host. At most this much copy
 * is redone after a crash. (In bench/cross-host.ts the guest's IOPS were the same at 1 s, 5 s and
 * 30 s: what a synchronous mirror's guest paid was the intent persists, see copy-state.ts.)
 */
const REMOTE_CHECKPOINT_MS = 5000;

/** Steps 1–2 and the connections, with the migration ready to run. On failure, nothing is left. */
export async function prepareRemoteMove(
  host: MoverHost,
  spec: RemoteMoveSpec,
  onEvent: (event: MigrationEvent) => void,
): Promise<PreparedMove> {
  const { entry, peer } = spec;
  const { descriptor } = entry;
  let record: MoveRecord = {
    version: JOURNAL_VERSION,
    id: randomUUID().slice(0, 8),
    vm: null,
    homeFrom: null,
    to: spec.datastore ?? 'default',
    disks: [
      {
        disk: descriptor.name,
        from: entry.datastore.name,
        generation: descriptor.generation,
        sourceImage: descriptor.image,
        image: descriptor.image,
        redoLogs: [],
      },
    ],
    committed: false,
    method: spec.method,
    startedAt: new Date().toISOString(),
    toHost: peer.name,
    commitRequested: false,
  };
  await host.journal.write(record);
  let answer: ReceiveAnswer | undefined;
  try {
    answer = await peer.post<ReceiveAnswer>(
      '/v1/receives',
      {
        id: record.id,
        disk: descriptor.name,
        sizeBytes: descriptor.sizeBytes,
        provisioning: spec.provisioning ?? descriptor.provisioning,
        generation: descriptor.generation,
        createdAt: descriptor.createdAt,
        sourceHost: spec.selfName,
        ...(spec.datastore === undefined ? {} : { datastore: spec.datastore }),
      },
      { timeoutMs: CALL_TIMEOUT_MS },
    );
    record = { ...record, to: answer.datastore };
    await host.journal.write(record);
    // Shared storage (the same directory is a datastore here too): the data goes over the
    // storage path, as vSphere 5.1 does; one NBD connection is kept for the pass-through.
    const shared = await spec.sharedDatastore(answer.datastoreId);
    const pool = await NbdClientPool.connect(
      {
        host: peer.nbdHost,
        port: answer.nbdPort,
        exportName: answer.exportName,
        tls: { psk: peer.psk },
      },
      shared !== undefined ? { connections: 1 } : poolOptions(spec),
    );
    let path: CopyPath;
    let file: CopyStateFile | undefined;
    try {
      path =
        shared === undefined
          ? { kind: 'network', target: pool }
          : {
              kind: 'shared',
              target: await openSharedImage(shared, answer, spec),
              datastore: shared,
            };
      if (path.kind === 'network') {
        file = await CopyStateFile.create(
          host.journal.copyStatePathOf(record.id),
          [
            {
              disk: descriptor.name,
              provisioning: spec.provisioning ?? descriptor.provisioning,
              sizeBytes: descriptor.sizeBytes,
            },
          ],
          copiedGranuleOf(spec),
        );
      }
    } catch (error) {
      await pool.close();
      throw error;
    }
    const state = file === undefined ? {} : { file };
    const run = new RemoteMoveRun(host, spec, record, answer, pool, path, state, onEvent);
    return { id: record.id, migration: run.migration, run: () => run.run() };
  } catch (error) {
    if (answer !== undefined) await abortAtPeer(host, peer, record.id);
    await host.journal.remove(record.id);
    throw error;
  }
}

/**
 * A cross-host move whose source was killed before it asked for the commit, continued (issue
 * 10): recovery kept its record and copy state (remote-recovery.ts) because the peer still had
 * the receive, and the disk is served from its source through the state's write-intent filter.
 * The peer hands the receive's ticket again (`reattach`), the connections are opened again, and
 * the migration runs as a fresh one would, its first pass limited to what the state does not
 * vouch for. The peer's refusal (it restarted and dropped the receive) rejects, and the move
 * stays offered until it is abandoned (rolled back).
 */
export async function prepareResumedRemoteMove(
  host: MoverHost,
  spec: RemoteMoveSpec,
  record: MoveRecord,
  file: CopyStateFile,
  onEvent: (event: MigrationEvent) => void,
): Promise<PreparedMove> {
  const { peer } = spec;
  const answer = await peer.post<ReceiveAnswer>(
    `/v1/receives/${record.id}/reattach`,
    {},
    { timeoutMs: CALL_TIMEOUT_MS },
  );
  const pool = await NbdClientPool.connect(
    {
      host: peer.nbdHost,
      port: answer.nbdPort,
      exportName: answer.exportName,
      tls: { psk: peer.psk },
    },
    poolOptions(spec),
  );
  const path: CopyPath = { kind: 'network', target: pool };
  const run = new RemoteMoveRun(
    host,
    spec,
    record,
    answer,
    pool,
    path,
    { file, isResumed: true },
    onEvent,
  );
  return { id: record.id, migration: run.migration, run: () => run.run() };
}

/** Where the copy and the mirror write: the peer's receiving export, or the image itself. */
type CopyPath =
  | { readonly kind: 'network'; readonly target: NbdClientPool }
  | { readonly kind: 'shared'; readonly target: RawFileDevice; readonly datastore: Datastore };

async function openSharedImage(
  datastore: Datastore,
  answer: ReceiveAnswer,
  spec: RemoteMoveSpec,
): Promise<RawFileDevice> {
  const provisioning = spec.provisioning ?? spec.entry.descriptor.provisioning;
  return openRawFile(join(datastore.path, answer.image), { provisioning });
}

function poolOptions(spec: RemoteMoveSpec): { connections?: number } {
  return spec.connections === undefined ? {} : { connections: spec.connections };
}

/** Asks the peer to drop receive `id`; a peer that cannot be reached is logged, not retried. */
export async function abortAtPeer(
  host: { readonly log: Logger },
  peer: PeerLink,
  id: string,
): Promise<void> {
  await peer.post(`/v1/receives/${id}/abort`, {}, { timeoutMs: 5000 }).catch((error: unknown) => {
    // Safe to leave: the peer never commits without our request, and forgets the copy at its
    // next start. Only its space is held meanwhile.
    host.log.warn(
      { move: id, host: peer.name, err: error },
      `host ${peer.name} could not be told to drop its partial copy: ${errorMessageOf(error)}`,
    );
  });
}

class RemoteMoveRun {
  readonly migration: Migration;
  private record: MoveRecord;
  private isCommitted = false;
  private readonly passThroughDevice: RemoteDevice;

  constructor(
    private readonly host: MoverHost,
    private readonly spec: RemoteMoveSpec,
    record: MoveRecord,
    private readonly answer: ReceiveAnswer,
    private readonly pool: NbdClientPool,
    private readonly path: CopyPath,
    /** The persisted copy state (network path only), and whether this run resumes from it. */
    private readonly state: { readonly file?: CopyStateFile; readonly isResumed?: boolean },
    private readonly onEvent: (event: MigrationEvent) => void,
  ) {
    this.record = record;
    const target = path.target;
    const { entry, peer } = spec;
    const copyState = state.file?.stateOf(entry.descriptor.name);
    const name = entry.descriptor.name;
    // After the switchover the guest's Switch forwards to the peer: the connections opened for
    // the move first, and if they break, fresh ones to the disk's export there.
    this.passThroughDevice = remoteDisk({
      name,
      host: peer.name,
      sizeBytes: target.size,
      peerNamed: () => peer,
      initial: pool,
      pool: poolOptions(spec),
    });
    this.migration = new Migration(
      [
        {
          name,
          switch: entry.stack.top,
          source: entry.stack.stats,
          copySource: entry.stack.raw,
          target,
          targetTop: this.passThroughDevice,
          createScratch: (label) => this.createRedoLog(label),
          ...(copyState === undefined ? {} : { copyState, isResumed: state.isResumed === true }),
        },
      ],
      {
        method: spec.method,
        speedBytesPerSecond: spec.speedBytesPerSecond,
        ...(spec.tuning === undefined ? {} : { tuning: spec.tuning }),
        ...(spec.chunkBytes === undefined ? {} : { chunkBytes: spec.chunkBytes }),
        checkpointMs: REMOTE_CHECKPOINT_MS,
        commit: () => this.commit(onEvent),
        onEvent: (event) => {
          if (event.type === 'phase' && event.phase === 'switchover') this.crashIf('final-copy');
          onEvent(event);
        },
        log: host.log,
      },
    );
  }

  async run(): Promise<MigrationResult> {
    this.onEvent({
      type: 'message',
      message:
        this.path.kind === 'shared'
          ? `copy path: shared storage (datastore ${this.path.datastore.name} here is ${this.answer.datastore} on host ${this.spec.peer.name})`
          : `copy path: network, NBD over TLS to host ${this.spec.peer.name} on ${this.pool.connectionCount} connections`,
    });
    // An unknown outcome keeps the guest held and the move journaled for the next start.
    const result = await runMove(
      this.host,
      this.record.id,
      this.migration,
      { isCommitted: () => this.isCommitted, discard: () => this.discard() },
      this.state.file,
    );
    await this.finish();
    return result;
  }

  private crashIf(point: CrashPoint): void {
    crashIf(this.host, this.record.id, point);
  }

  /** Step 4, guest held: the peer's commit, and its outcome whatever it costs (peer-commit.ts). */
  private async commit(onEvent: (event: MigrationEvent) => void): Promise<void> {
    const { peer, entry } = this.spec;
    const id = this.record.id;
    this.crashIf('before-commit');
    this.record = await commitAtPeer({
      peer,
      journal: this.host.journal,
      log: this.host.log,
      record: this.record,
      subject: `disk ${entry.descriptor.name}`,
      commit: { path: `/v1/receives/${id}/commit`, body: { shared: this.path.kind === 'shared' } },
      resolve: {
        path: `/v1/receives/${id}/resolve`,
        body: { disk: entry.descriptor.name, generation: entry.descriptor.generation },
      },
      closing: this.spec.closing,
      onEvent,
    });
    this.isCommitted = true;
    this.crashIf('after-commit');
  }

  /** Steps 5–6. */
  private async finish(): Promise<void> {
    const { entry, peer } = this.spec;
    const { exports, log, journal } = this.host;
    const { name, generation } = entry.descriptor;
    const from = entry.datastore;
    exports.delete(name);
    const tombstone: Tombstone = {
      name,
      datastore: this.answer.datastore,
      generation: generation + 1,
      host: peer.name,
      sizeBytes: entry.descriptor.sizeBytes,
    };
    exports.addPassThrough(passThroughOf(tombstone, from, entry.stack.top));
    await from.writeTombstone(tombstone);
    await entry.stack.raw.close().catch((error: unknown) => {
      log.warn({ disk: name, err: error }, 'closing the old source image failed');
    });
    // The peer serves the disk now; this host must not keep the shared image open for writing.
    if (this.path.kind === 'shared') await this.path.target.close().catch(() => undefined);
    const leftover = await from.removeDisk(entry.descriptor, { isImageInBackground: true });
    if (leftover) log.warn({ disk: name, file: leftover.file }, leftover.message);
    for (const disk of this.record.disks) {
      for (const redoLog of disk.redoLogs) await from.removeFile(redoLog);
    }
    await peer
      .post(`/v1/receives/${this.record.id}/finish`, {}, { timeoutMs: CALL_TIMEOUT_MS })
      .catch((error: unknown) => {
        log.warn({ move: this.record.id, err: error }, 'the peer could not be told to finish');
      });
    await this.state.file?.remove();
    await journal.remove(this.record.id);
    log.info(
      { disk: name, host: peer.name, datastore: this.answer.datastore, generation: generation + 1 },
      `disk ${name} moved to host ${peer.name}; its export here passes through`,
    );
  }

  /** Before the commit, on failure or cancel: the guest is back on the source; drop the copy. */
  private async discard(): Promise<void> {
    const { entry, peer } = this.spec;
    await this.passThroughDevice.close().catch(() => undefined);
    await this.path.target.close().catch(() => undefined);
    try {
      for (const disk of this.record.disks) {
        for (const redoLog of disk.redoLogs) await entry.datastore.removeFile(redoLog);
      }
      await abortAtPeer(this.host, peer, this.record.id);
      await this.state.file?.remove();
      await this.host.journal.remove(this.record.id);
    } catch (error) {
      this.host.log.warn(
        { move: this.record.id, err: error },
        `the cancelled move's leftovers could not be removed yet: ${errorMessageOf(error)}`,
      );
    }
  }

  /** A redo log for the snapshot method, in the source's own datastore, journaled first. */
  private async createRedoLog(label: string): Promise<Scratch> {
    const from = this.spec.entry.datastore;
    const disk = this.record.disks[0];
    assert(disk !== undefined, 'a remote move has one disk');
    const fileName = from.redoLogName(disk.disk, disk.redoLogs.length + 1);
    this.record = { ...this.record, disks: [{ ...disk, redoLogs: [...disk.redoLogs, fileName] }] };
    await this.host.journal.write(this.record);
    const path = `${from.path}/${fileName}`;
    await createRawImage(path, this.pool.size, 'thin');
    const device = await openRawFile(path, { provisioning: 'thin' });
    this.host.log.debug({ disk: disk.disk, file: fileName, label }, 'redo log created');
    return { device, remove: () => device.close() };
  }
}
