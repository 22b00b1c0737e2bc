import { randomUUID } from 'node:crypto';
import { open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { createRawImage, openRawFile } from '../block/raw-file.js';
import type { MethodName, MethodTuning, Scratch } from '../migrate/method.js';
import { Migration, type MigrationEvent, type MigrationResult } from '../migrate/migration.js';
import { NbdClientPool } from '../nbd/client-pool.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Datastore, Tombstone } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import { crashIf, type MoverHost, runMove } from './disk-mover.js';
import { HostError, HostErrorCode } from './errors.js';
import type { DiskEntry } from './export-table.js';
import { useMigrationTls } from './migration-tls.js';
import { JOURNAL_VERSION, type MoveRecord } from './move-journal.js';
import { passThroughOf, type RemoteDevice, remoteDisk } from './pass-through.js';
import { PeerError } from './peer-client.js';
import { commitAtPeer } from './peer-commit.js';
import {
  cancelMigration,
  continueMigration,
  enableMigrationCapabilities,
  type MigrationInfo,
  queryMigration,
  setMigrationParameters,
  startMigration,
  waitForMigrationStatus,
} from './qemu/live-migration.js';
import type { QemuProcess } from './qemu/qemu-process.js';
import type { PeerLink } from './remote-mover.js';
import type { VmReceiveTicket } from './vm-receiver.js';
import { CONSOLE_LOG_FILE } from './vm-runtime.js';
import type { VmEntry } from './vm-table.js';

/**
 * Moves a VM — home, disks and, while it runs, its memory and execution — to another host, live
 * (issue 8): vSphere 5.1's vMotion without shared storage, Storage XenMotion across pools. This
 * host, the source, drives; the peer's VM receiver (vm-receiver.ts) creates and commits. In
 * order:
 *
 *   1. journal record here (`vm`, `toHost`), then the peer receives the home's files and makes
 *      an empty image per disk; the VM's config is rewritten there for its networks
 *   2. one migration of every disk, each entering its mirror in turn (migration.ts), over NBD
 *      with TLS to the peer; the guest keeps running and writing here
 *   3. the peer starts the VM's QEMU waiting for memory (`-incoming`) while the disks copy;
 *      every disk in step, QEMU here sends the memory with `pause-before-switchover`, the disks'
 *      mirrors keeping them in step meanwhile. At `pre-switchover` QEMU has stopped the guest
 *      and drained its I/O
 *   4. the storage switchover of all disks together: final copy, flush, then `commitRequested`
 *      journaled, the peer's one commit point for all disks, `committed` journaled; the disks'
 *      exports here now pass through to the peer
 *   5. `migrate-continue`: QEMU sends the device state; the guest runs at the peer, which
 *      announces its MAC; QEMU here exits; the VM, its disks and its home are deleted here
 *
 * A failure or cancel before (4)'s commit rolls back: QEMU's migration cancelled (the guest
 * resumes here, on its own disks, which never stopped being the authority), the peer told to
 * drop everything (its QEMU killed). After the commit the move goes forward: if the memory
 * migration then fails, the guest resumes here with its disks passed through to the peer.
 */
export interface VmMotionSpec {
  readonly vm: VmEntry;
  /** The VM's disks, in its order. */
  readonly entries: readonly DiskEntry[];
  readonly home: string;
  /** The VM's QEMU, or undefined if it is stopped (then only the disks and home move). */
  readonly qemu: QemuProcess | undefined;
  readonly peer: PeerLink;
  readonly selfName: string;
  readonly datastore?: string;
  readonly datastoreMap?: Readonly<Record<string, string>>;
  readonly networkMap?: Readonly<Record<string, string>>;
  readonly method: MethodName;
  readonly speedBytesPerSecond: number;
  readonly provisioning?: DiskDescriptor['provisioning'];
  readonly tuning?: Partial<MethodTuning>;
  readonly chunkBytes?: number;
  readonly connections?: number;
  /** QEMU's `downtime-limit` for the memory's last round. */
  readonly maxDowntimeMs: number;
  /** Where QEMU finds the key for the memory stream's TLS (migration-tls.ts). */
  readonly tlsDir: string;
  readonly closing: AbortSignal;
}

/** Where the guest's pause went (the parts of vMotion's stun). */
export interface VmDowntime {
  /** QEMU's own measure: guest stopped here to the end of the migration stream. */
  readonly qemuDowntimeMs: number;
  /** Guest I/O held for the storage switchover (final copy, flush, commit). */
  readonly storageSwitchoverMs: number;
  /** From QEMU stopping the guest here (pre-switchover) to the guest running at the peer. */
  readonly pauseMs: number;
  readonly ramBytes: number;
  /** Attempts of the memory migration (a second one runs with auto-converge). */
  readonly attempts: number;
}

export interface VmMotionResult extends MigrationResult {
  readonly memory: VmDowntime | null;
}

/** What a VM motion asks of its agent at the end. */
export interface VmMotionHost extends MoverHost {
  /** The guest runs at the peer: forget the VM here (home, record), its QEMU has exited. */
  forgetVm(vm: VmEntry): Promise<void>;
}

const RECEIVE_TIMEOUT_MS = 120_000;
const INCOMING_TIMEOUT_MS = 60_000;
/** Dirty-sync rounds a memory migration gets before it counts as not converging. */
const MEMORY_ROUNDS_MAX = 30;
/**
 * A memory stream that sends nothing for this long has lost its link: QEMU itself would wait
 * for TCP to give up, which takes many minutes.
 */
const MEMORY_STALL_MS = 20_000;
const MEMORY_TIMEOUT_MS = 10 * 60_000;
const COMPLETE_TIMEOUT_MS = 120_000;
/** The stream's cap when no speed is set: QEMU's default (128 MiB/s) would be the bottleneck. */
const MEMORY_BANDWIDTH_UNLIMITED = 64 * 1024 * 1024 * 1024;
const ABORT_RETRY_MS = 5000;
const ADMISSION_TIMEOUT_MS = 10_000;
const ABORT_RETRIES_MAX = 120;
/** The config is not carried as a file: the peer writes its own, rewritten for it. */
const NOT_CARRIED = new Set(['vm.json']);
/** The console carried with the commit, in the guest's stop: bounded, it is on the stun's path. */
const CONSOLE_TAIL_MAX_BYTES = 1024 * 1024;

export interface PreparedVmMotion {
  readonly id: string;
  readonly migration: Migration;
  run(): Promise<VmMotionResult>;
}

/** Steps 1 and the connections, the migration ready to run. On failure, nothing is left. */
export async function prepareVmMotion(
  host: VmMotionHost,
  spec: VmMotionSpec,
  onEvent: (event: MigrationEvent) => void,
): Promise<PreparedVmMotion> {
  const { peer, vm } = spec;
  const record: MoveRecord = {
    version: JOURNAL_VERSION,
    id: randomUUID().slice(0, 8),
    vm: vm.config.name,
    homeFrom: vm.datastore.name,
    to: spec.datastore ?? 'default',
    disks: spec.entries.map((entry) => ({
      disk: entry.descriptor.name,
      from: entry.datastore.name,
      generation: entry.descriptor.generation,
      sourceImage: entry.descriptor.image,
      image: entry.descriptor.image,
      redoLogs: [],
    })),
    committed: false,
    method: spec.method,
    startedAt: new Date().toISOString(),
    toHost: peer.name,
    commitRequested: false,
  };
  // A busy peer (its migration limits) says so before the home's files travel; the receive
  // below is admitted again, for real.
  await peer
    .post(
      '/v1/vm-receives/admission',
      {
        id: record.id,
        ...(spec.datastore === undefined ? {} : { datastore: spec.datastore }),
        ...(spec.datastoreMap === undefined ? {} : { datastoreMap: spec.datastoreMap }),
        disks: spec.entries.map((entry) => ({ from: entry.datastore.name })),
      },
      { timeoutMs: ADMISSION_TIMEOUT_MS },
    )
    .catch((error: unknown) => {
      // A peer from before the admission route: the receive itself decides.
      if (error instanceof PeerError && error.remoteCode === 'ERR_NO_ROUTE') return;
      throw error;
    });
  await host.journal.write(record);
  let ticket: VmReceiveTicket | undefined;
  const pools: NbdClientPool[] = [];
  // What of the console goes with the home; the rest goes with the commit (`consoleTail`).
  const { files, consoleBytes: consoleSentBytes } = await readHomeFiles(spec.home);
  try {
    ticket = await peer.post<VmReceiveTicket>(
      '/v1/vm-receives',
      {
        id: record.id,
        config: vm.config,
        sourceHost: spec.selfName,
        ...(spec.datastore === undefined ? {} : { datastore: spec.datastore }),
        ...(spec.datastoreMap === undefined ? {} : { datastoreMap: spec.datastoreMap }),
        ...(spec.networkMap === undefined ? {} : { networkMap: spec.networkMap }),
        disks: spec.entries.map((entry) => ({
          disk: entry.descriptor.name,
          sizeBytes: entry.descriptor.sizeBytes,
          provisioning: spec.provisioning ?? entry.descriptor.provisioning,
          generation: entry.descriptor.generation,
          createdAt: entry.descriptor.createdAt,
          from: entry.datastore.name,
        })),
        files,
      },
      { timeoutMs: RECEIVE_TIMEOUT_MS },
    );
    const journaled: MoveRecord = { ...record, to: ticket.datastore };
    await host.journal.write(journaled);
    const port = await peer.nbdPort();
    for (const disk of ticket.disks) {
      pools.push(
        await NbdClientPool.connect(
          { host: peer.nbdHost, port, exportName: disk.exportName, tls: { psk: peer.psk } },
          spec.connections === undefined ? {} : { connections: spec.connections },
        ),
      );
    }
    const run = new VmMotionRun(host, spec, journaled, pools, consoleSentBytes, onEvent);
    return { id: record.id, migration: run.migration, run: () => run.run() };
  } catch (error) {
    for (const pool of pools) await pool.close().catch(() => undefined);
    if (ticket !== undefined) await abortVmAtPeer(host, peer, record.id);
    await host.journal.remove(record.id);
    throw error;
  }
}

class VmMotionRun {
  readonly migration: Migration;
  private record: MoveRecord;
  private isCommitted = false;
  private readonly passThroughs: RemoteDevice[];
  /** Set once QEMU's memory migration has started: a rollback must cancel it. */
  private isMemoryMoving = false;
  private memoryInfo: MigrationInfo | undefined;
  private attempts = 0;
  private stoppedAtMs = 0;
  /** `migrate-continue` was accepted. */
  private isContinued = false;
  /** What the guest wrote on its console since the home went, read once it stopped. */
  private consoleTail: Promise<string> | undefined;
  /** The destination QEMU asked for at the start of the copy. */
  private incoming: Promise<{ port: number; tls: boolean }> | undefined;
  private storageSwitchoverMs = 0;

  constructor(
    private readonly host: VmMotionHost,
    private readonly spec: VmMotionSpec,
    record: MoveRecord,
    private readonly pools: readonly NbdClientPool[],
    private readonly consoleSentBytes: number,
    private readonly onEvent: (event: MigrationEvent) => void,
  ) {
    this.record = record;
    const { peer } = spec;
    this.passThroughs = spec.entries.map((entry, index) =>
      remoteDisk({
        name: entry.descriptor.name,
        host: peer.name,
        sizeBytes: entry.descriptor.sizeBytes,
        peerNamed: () => peer,
        initial: pools[index] as NbdClientPool,
        pool: spec.connections === undefined ? {} : { connections: spec.connections },
      }),
    );
    this.migration = new Migration(
      spec.entries.map((entry, index) => ({
        name: entry.descriptor.name,
        switch: entry.stack.top,
        source: entry.stack.stats,
        copySource: entry.stack.raw,
        target: pools[index] as NbdClientPool,
        targetTop: this.passThroughs[index] as RemoteDevice,
        createScratch: (label: string) => this.createRedoLog(index, label),
      })),
      {
        method: spec.method,
        speedBytesPerSecond: spec.speedBytesPerSecond,
        ...(spec.tuning === undefined ? {} : { tuning: spec.tuning }),
        ...(spec.chunkBytes === undefined ? {} : { chunkBytes: spec.chunkBytes }),
        commit: () => this.commit(),
        ...(spec.qemu === undefined
          ? {}
          : { beforeSwitchover: (signal: AbortSignal) => this.moveMemory(signal) }),
        onEvent: (event) => {
          if (event.type === 'phase' && event.phase === 'switchover') this.crashIf('final-copy');
          if (event.type === 'switchover') this.storageSwitchoverMs = event.downtimeMs;
          onEvent(event);
        },
        log: host.log,
      },
    );
  }

  async run(): Promise<VmMotionResult> {
    const { peer } = this.spec;
    this.onEvent({
      type: 'message',
      message: `moving VM ${this.spec.vm.config.name} to host ${peer.name}: ${this.spec.entries.length} disk(s) over NBD with TLS, then ${this.spec.qemu === undefined ? 'no memory (the VM is stopped)' : 'its memory'}`,
    });
    // The destination's QEMU starts while the disks copy: it only waits, and its start-up
    // (a few hundred milliseconds) is then not on the move's path.
    if (this.spec.qemu !== undefined) {
      this.incoming = this.askIncoming();
      this.incoming.catch(() => undefined);
    }
    const result = await runMove(this.host, this.record.id, this.migration, {
      isCommitted: () => this.isCommitted,
      discard: () => this.discard(),
    });
    const memory = await this.finish();
    return { ...result, memory };
  }

  /** The peer's QEMU for the VM, waiting for the memory: its port, and whether it is TLS. */
  private askIncoming(): Promise<{ port: number; tls: boolean }> {
    return this.spec.peer.post<{ port: number; tls: boolean }>(
      `/v1/vm-receives/${this.record.id}/incoming`,
      {},
      { timeoutMs: INCOMING_TIMEOUT_MS },
    );
  }

  private crashIf(point: Parameters<typeof crashIf>[2]): void {
    crashIf(this.host, this.record.id, point);
  }

  /**
   * Step 3: QEMU's memory migration until `pre-switchover` (guest stopped, its I/O drained).
   * One attempt as it is; if it does not converge, one more with auto-converge (QEMU throttles
   * the guest's CPUs); then it fails with the reason, the guest running here.
   */
  private async moveMemory(signal: AbortSignal): Promise<void> {
    const qemu = this.spec.qemu;
    if (qemu === undefined) return;
    this.onEvent({ type: 'phase', phase: 'memory' });
    for (let attempt = 1; attempt <= 2; attempt += 1) {
      this.attempts = attempt;
      const autoConverge = attempt > 1;
      // The first attempt's QEMU was started with the copy; a second attempt's anew.
      const started = attempt === 1 ? this.incoming : undefined;
      const { port, tls } = await (started ?? this.askIncoming());
      if (tls) await useMigrationTls(qemu.qmp, this.spec.tlsDir, this.spec.peer.psk, 'client');
      await enableMigrationCapabilities(qemu.qmp, {
        pauseBeforeSwitchover: true,
        events: true,
        autoConverge,
      });
      await setMigrationParameters(qemu.qmp, {
        downtimeLimitMs: this.spec.maxDowntimeMs,
        maxBandwidthBytes:
          this.spec.speedBytesPerSecond > 0
            ? this.spec.speedBytesPerSecond
            : MEMORY_BANDWIDTH_UNLIMITED,
      });
      const uri = `tcp:${formatUriHost(this.spec.peer.nbdHost)}:${port}`;
      this.onEvent({
        type: 'message',
        message: `memory migration to ${uri}${tls ? ' over TLS' : ' (no TLS: the peer has no key for us)'}${autoConverge ? ' with auto-converge' : ''}, downtime limit ${this.spec.maxDowntimeMs} ms`,
      });
      this.isMemoryMoving = true;
      await startMigration(qemu.qmp, uri);
      this.crashIf('memory');
      const outcome = await this.waitForPreSwitchover(qemu, signal);
      if (outcome === 'ready') {
        this.stoppedAtMs = performance.now();
        // The guest is stopped: its console is final. Read now, while the disks' last writes
        // are made durable, so the commit only carries it.
        this.consoleTail = consoleTail(this.spec.home, this.consoleSentBytes);
        this.consoleTail.catch(() => undefined);
        const ram = this.memoryInfo?.ram;
        this.onEvent({
          type: 'message',
          message: `memory in step (${ram?.['dirty-sync-count'] ?? '?'} rounds, ${Math.round((ram?.transferred ?? 0) / (1024 * 1024))} MiB sent): guest stopped for the switchover`,
        });
        return;
      }
      // Not converging: stop this attempt (the guest keeps running here) and try harder.
      await this.cancelMemory(qemu);
      this.onEvent({
        type: 'message',
        message: `memory migration did not converge within ${MEMORY_ROUNDS_MAX} rounds (expected downtime ${this.memoryInfo?.['expected-downtime'] ?? '?'} ms > ${this.spec.maxDowntimeMs} ms)${autoConverge ? '' : '; retrying with auto-converge'}`,
      });
    }
    throw new HostError(
      HostErrorCode.MemoryMigration,
      `the memory of VM ${this.spec.vm.config.name} did not converge within --max-downtime ${this.spec.maxDowntimeMs} ms, even with auto-converge (expected downtime ${this.memoryInfo?.['expected-downtime'] ?? '?'} ms, dirty rate ${this.memoryInfo?.ram?.['dirty-pages-rate'] ?? '?'} pages/s); the VM keeps running here. Allow a longer --max-downtime, or move it when it writes less memory`,
    );
  }

  /** `ready` at pre-switchover; `not-converging` after too many rounds; throws on failure. */
  private async waitForPreSwitchover(
    qemu: QemuProcess,
    signal: AbortSignal,
  ): Promise<'ready' | 'not-converging'> {
    const notConverging = new AbortController();
    const stalled = new AbortController();
    const all = AbortSignal.any([signal, notConverging.signal, stalled.signal]);
    let sentBytes = -1;
    let sentAtMs = performance.now();
    try {
      this.memoryInfo = await waitForMigrationStatus(qemu.qmp, ['pre-switchover'], {
        timeoutMs: MEMORY_TIMEOUT_MS,
        signal: all,
        onProgress: (info) => {
          this.memoryInfo = info;
          if ((info.ram?.['dirty-sync-count'] ?? 0) > MEMORY_ROUNDS_MAX) notConverging.abort();
          const sent = info.ram?.transferred ?? 0;
          if (sent !== sentBytes) {
            sentBytes = sent;
            sentAtMs = performance.now();
          } else if (performance.now() - sentAtMs > MEMORY_STALL_MS) {
            stalled.abort();
          }
        },
      });
      return 'ready';
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (notConverging.signal.aborted) return 'not-converging';
      const why = stalled.signal.aborted
        ? `nothing was sent for ${MEMORY_STALL_MS / 1000} s (is the link to host ${this.spec.peer.name} down?)`
        : errorMessageOf(error);
      throw new HostError(
        HostErrorCode.MemoryMigration,
        `the memory migration of VM ${this.spec.vm.config.name} failed: ${why}; the VM keeps running here`,
        { cause: error },
      );
    }
  }

  /** Cancels QEMU's migration, if this run started one; the guest then runs here again. */
  private async cancelMemory(qemu: QemuProcess): Promise<void> {
    if (!this.isMemoryMoving) return;
    this.isMemoryMoving = false;
    await resumeGuestHere(qemu, this.host.log, this.spec.vm.config.name);
  }

  /** Step 4, guest stopped and its I/O held: the peer's commit (peer-commit.ts), then the memory. */
  private async commit(): Promise<void> {
    const { peer, vm } = this.spec;
    const id = this.record.id;
    this.crashIf('before-commit');
    this.record = await commitAtPeer({
      peer,
      journal: this.host.journal,
      log: this.host.log,
      record: this.record,
      subject: `VM ${vm.config.name}`,
      // The guest is stopped: its console is complete, and what it wrote since the home went
      // over follows it, ahead of what the guest will write at the peer.
      commit: {
        path: `/v1/vm-receives/${id}/commit`,
        body: { consoleTail: (await this.consoleTail?.catch(() => '')) ?? '' },
      },
      resolve: { path: `/v1/vm-receives/${id}/resolve`, body: { vm: vm.config.name } },
      closing: this.spec.closing,
      onEvent: this.onEvent,
    });
    this.isCommitted = true;
    this.crashIf('after-commit');
    // The rest of the memory goes at once, not after the migration's bookkeeping: the guest is
    // stopped until it has. QEMU's last flush of the disks waits, held, until the migration
    // resumes them on the peer's copies a moment later.
    if (this.spec.qemu !== undefined) await this.continueMemory(this.spec.qemu);
  }

  /** `migrate-continue`; a failure is the memory's, and `finish` resumes the guest here. */
  private async continueMemory(qemu: QemuProcess): Promise<void> {
    try {
      await continueMigration(qemu.qmp);
      this.isContinued = true;
    } catch (error) {
      this.host.log.error({ vm: this.spec.vm.config.name, err: error }, 'migrate-continue failed');
    }
  }

  /**
   * Step 5: the memory's last part, the guest running at the peer, everything here deleted. If
   * the memory migration fails now, the guest resumes here over its disks at the peer.
   */
  private async finish(): Promise<VmDowntime | null> {
    const { peer, qemu, vm, entries } = this.spec;
    let memory: VmDowntime | null = null;
    let memoryMoved = qemu === undefined;
    if (qemu !== undefined) {
      try {
        if (!this.isContinued) throw new Error('migrate-continue was refused');
        await waitForMigrationStatus(qemu.qmp, ['completed'], { timeoutMs: COMPLETE_TIMEOUT_MS });
        memoryMoved = true;
        this.memoryInfo = await completedInfo(qemu);
      } catch (error) {
        this.host.log.error(
          { vm: vm.config.name, err: error },
          'memory migration failed after the commit',
        );
        await this.cancelMemory(qemu);
      }
    }
    const answer = await peer
      .post<{ state: string }>(
        `/v1/vm-receives/${this.record.id}/finish`,
        { memoryMoved },
        { timeoutMs: 60_000 },
      )
      .catch((error: unknown) => {
        this.host.log.warn(
          { move: this.record.id, err: error },
          'the peer could not be told to finish',
        );
        return { state: 'unknown' };
      });
    if (qemu !== undefined && memoryMoved) {
      const pauseMs = Math.round(performance.now() - this.stoppedAtMs);
      memory = {
        qemuDowntimeMs: Number(this.memoryInfo?.downtime ?? 0),
        storageSwitchoverMs: this.storageSwitchoverMs,
        pauseMs,
        ramBytes: Number(this.memoryInfo?.ram?.transferred ?? 0),
        attempts: this.attempts,
      };
      this.onEvent({
        type: 'message',
        message: `VM ${vm.config.name} runs on host ${peer.name} (${answer.state}): paused ${pauseMs} ms, QEMU downtime ${memory.qemuDowntimeMs} ms, storage switchover ${memory.storageSwitchoverMs} ms`,
      });
      await qemu.quit().catch(() => qemu.kill());
    }
    // The disks live at the peer. With the guest gone from here, so do their exports; if the
    // guest still runs here (memory failed), they pass through to the peer.
    for (const [index, entry] of entries.entries()) {
      await this.retire(entry, this.passThroughs[index] as RemoteDevice, !memoryMoved);
    }
    if (memoryMoved) await this.host.forgetVm(vm);
    await this.host.journal.remove(this.record.id);
    if (!memoryMoved) {
      throw new HostError(
        HostErrorCode.MemoryMigration,
        `VM ${vm.config.name}'s disks moved to host ${peer.name}, but its memory did not: the guest runs on here, with its disks passed through to host ${peer.name}`,
      );
    }
    return memory;
  }

  /** A disk that moved: its old copy deleted here; passed through, or closed with the VM gone. */
  private async retire(
    entry: DiskEntry,
    passThrough: RemoteDevice,
    keepPassThrough: boolean,
  ): Promise<void> {
    const { exports, log } = this.host;
    const { name, generation, sizeBytes } = entry.descriptor;
    const from: Datastore = entry.datastore;
    exports.delete(name);
    if (keepPassThrough) {
      const tombstone: Tombstone = {
        name,
        datastore: this.record.to,
        generation: generation + 1,
        host: this.spec.peer.name,
        sizeBytes,
      };
      exports.addPassThrough(passThroughOf(tombstone, from, entry.stack.top));
      await from.writeTombstone(tombstone);
    } else {
      await passThrough.close().catch(() => undefined);
    }
    await entry.stack.raw.close().catch((error: unknown) => {
      log.warn({ disk: name, err: error }, 'closing the old source image failed');
    });
    const leftover = await from.removeDisk(entry.descriptor, { isImageInBackground: true });
    if (leftover) log.warn({ disk: name, file: leftover.file }, leftover.message);
    const disk = this.record.disks.find((each) => each.disk === name);
    for (const redoLog of disk?.redoLogs ?? []) await from.removeFile(redoLog);
  }

  /** Before the commit, on failure or cancel: the guest back on its disks here; drop the rest. */
  private async discard(): Promise<void> {
    if (this.spec.qemu !== undefined) await this.cancelMemory(this.spec.qemu);
    for (const device of this.passThroughs) await device.close().catch(() => undefined);
    for (const pool of this.pools) await pool.close().catch(() => undefined);
    try {
      for (const [index, disk] of this.record.disks.entries()) {
        const entry = this.spec.entries[index];
        for (const redoLog of disk.redoLogs) await entry?.datastore.removeFile(redoLog);
      }
      await abortVmAtPeer(this.host, this.spec.peer, this.record.id);
      await this.host.journal.remove(this.record.id);
    } catch (error) {
      this.host.log.warn(
        { move: this.record.id, err: error },
        `the cancelled VM move's leftovers could not be removed yet: ${errorMessageOf(error)}`,
      );
    }
  }

  /** A redo log for the snapshot method, in the disk's own datastore here, journaled first. */
  private async createRedoLog(index: number, label: string): Promise<Scratch> {
    const entry = this.spec.entries[index] as DiskEntry;
    const disks = [...this.record.disks];
    const disk = disks[index];
    if (disk === undefined) throw new Error(`no disk ${index} in move ${this.record.id}`);
    const fileName = entry.datastore.redoLogName(disk.disk, disk.redoLogs.length + 1);
    disks[index] = { ...disk, redoLogs: [...disk.redoLogs, fileName] };
    this.record = { ...this.record, disks };
    await this.host.journal.write(this.record);
    const path = join(entry.datastore.path, fileName);
    await createRawImage(path, entry.descriptor.sizeBytes, 'thin');
    const device = await openRawFile(path, { provisioning: 'thin' });
    this.host.log.debug({ disk: disk.disk, file: fileName, label }, 'redo log created');
    return { device, remove: () => device.close() };
  }
}

/**
 * Cancels QEMU's memory migration if one is under way (QEMU resumes the guest itself then), and
 * resumes a guest still stopped. Logged, never thrown: a guest that cannot be resumed is an
 * operator's matter, and the caller's own failure is the one to report.
 */
export async function resumeGuestHere(qemu: QemuProcess, log: Logger, vm: string): Promise<void> {
  try {
    const info = await queryMigration(qemu.qmp);
    if (!['completed', 'failed', 'cancelled', 'none'].includes(info.status)) {
      await cancelMigration(qemu.qmp);
      await waitForMigrationStatus(qemu.qmp, ['cancelled', 'failed'], { timeoutMs: 30_000 });
    }
    if ((await qemu.status()) !== 'running') await qemu.qmp.execute('cont');
  } catch (error) {
    log.error({ vm, err: error }, `VM ${vm} could not be resumed here: ${errorMessageOf(error)}`);
  }
}

/**
 * Asks the peer to drop VM receive `id` (its QEMU, its copies, its home). A peer that cannot be
 * reached now (the link is down) is asked again in the background, every ABORT_RETRY_MS for up to
 * ABORT_RETRIES_MAX times, so its QEMU and space are not held until its own restart; the retries
 * never keep the process alive.
 */
export async function abortVmAtPeer(
  host: { readonly log: MoverHost['log'] },
  peer: PeerLink,
  id: string,
): Promise<void> {
  const ask = (): Promise<boolean> =>
    peer.post(`/v1/vm-receives/${id}/abort`, {}, { timeoutMs: 15_000 }).then(
      () => true,
      (error: unknown) => {
        host.log.warn(
          { move: id, host: peer.name, err: error },
          `host ${peer.name} could not be told to drop its copy of the VM yet: ${errorMessageOf(error)}`,
        );
        return false;
      },
    );
  if (await ask()) return;
  let retries = 0;
  const retry = (): void => {
    const timer = setTimeout(() => {
      void ask().then((isDone) => {
        retries += 1;
        if (!isDone && retries < ABORT_RETRIES_MAX) retry();
      });
    }, ABORT_RETRY_MS);
    timer.unref();
  };
  retry();
}

/**
 * The home's files to carry (config excepted: the peer writes its own), base64, and how many
 * bytes of the console log are among them (the rest goes with the commit).
 */
async function readHomeFiles(
  home: string,
): Promise<{ files: { name: string; data: string }[]; consoleBytes: number }> {
  const names = (await readdir(home, { withFileTypes: true }))
    .filter(
      (entry) => entry.isFile() && !NOT_CARRIED.has(entry.name) && !entry.name.startsWith('.'),
    )
    .map((entry) => entry.name)
    // The console log is read last: it is the one that grows meanwhile.
    .sort((a, b) => Number(a === CONSOLE_LOG_FILE) - Number(b === CONSOLE_LOG_FILE));
  const files: { name: string; data: string }[] = [];
  let consoleBytes = 0;
  for (const name of names) {
    const data = await readFile(join(home, name));
    if (name === CONSOLE_LOG_FILE) consoleBytes = data.length;
    files.push({ name, data: data.toString('base64') });
  }
  return { files, consoleBytes };
}

/**
 * `query-migrate` once completed. QEMU 7.2 reports `completed` a moment before it has computed
 * the downtime, which then reads 0: asked again, briefly, until it is there.
 */
async function completedInfo(qemu: QemuProcess): Promise<MigrationInfo> {
  let info = await queryMigration(qemu.qmp);
  for (let attempt = 0; attempt < 25 && !(Number(info.downtime) > 0); attempt += 1) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    info = await queryMigration(qemu.qmp);
  }
  return info;
}

/**
 * The console written since its first `sentBytes` went with the home, base64; at most its last
 * CONSOLE_TAIL_MAX_BYTES, after a line saying how much was left out.
 */
async function consoleTail(home: string, sentBytes: number): Promise<string> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(join(home, CONSOLE_LOG_FILE), 'r');
  } catch {
    return '';
  }
  try {
    const { size } = await handle.stat();
    const length = Math.max(0, Math.min(size - sentBytes, CONSOLE_TAIL_MAX_BYTES));
    const skipped = size - sentBytes - length;
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, size - length);
    const note = skipped > 0 ? `\n[ferry: ${skipped} bytes of console left out by the move]\n` : '';
    return Buffer.concat([Buffer.from(note), buffer]).toString('base64');
  } finally {
    await handle.close();
  }
}

function formatUriHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}
