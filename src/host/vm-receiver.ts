import { appendFile, mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Provisioning } from '../block/raw-file.js';
import { WriteGate } from '../block/write-gate.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { syncDirectory, writeJsonAtomic } from './atomic-file.js';
import type { Datastore } from './datastore.js';
import { HostError, HostErrorCode } from './errors.js';
import type { ExportTable } from './export-table.js';
import { useMigrationTls } from './migration-tls.js';
import { checkName, isValidName } from './names.js';
import { announceSelf, queryMigration, startIncoming } from './qemu/live-migration.js';
import { QemuProcess } from './qemu/qemu-process.js';
import {
  commitReceivesAtStart,
  type Receiver,
  type ReceiveState,
  type ReceiveTicket,
} from './receiver.js';
import { RecordFiles } from './record-files.js';
import type { VmConfig } from './vm-config.js';
import { parseVmConfig } from './vm-config.js';
import { homePath, VM_CONFIG_FILE } from './vm-home.js';
import { CONSOLE_LOG_FILE, QEMU_PID_FILE, QMP_SOCKET_FILE, RUN_DIR } from './vm-runtime.js';
import type { VmService } from './vm-service.js';

/**
 * The destination side of moving a running VM to this host (issue 8; vm-motion.ts drives it
 * from the source, as Storage XenMotion's source host does). Steps, each asked by the source:
 *
 *   1. `receive`: a record under `<data>/vm-receives/` (durable); the VM's home directory made
 *      here with the files the source sent (console log, kernel, initrd) but no `vm.json`, so
 *      no scan takes it for a VM yet; each disk received as a cross-host disk move is
 *      (receiver.ts), and also offered under its own name to this host's QEMU only (the local
 *      socket), its I/O held until the commit. The config is rewritten for this host: each
 *      NIC's network mapped (`--network-map`), and it must exist here.
 *   2. `incoming`: QEMU started for the VM with `-incoming defer`, its disks on those exports,
 *      listening for the memory on a port it picks.
 *   3. `commit`, the source's guest stopped: every disk flushed, then `committed: true` in the
 *      record — THE commit point for all of the VM's disks together — then each descriptor,
 *      the held exports let go, `vm.json` written, the VM registered.
 *   4. `finish`: QEMU's memory migration completed; the guest runs here. Its MAC is announced
 *      (`announce-self`) and the record goes. If the memory migration failed after the commit,
 *      the guest runs on at the source over the disks here: the incoming QEMU is killed, the VM
 *      unregistered here, its disks kept.
 *
 * Or `abort` (before the commit): the QEMU killed, the disks' copies, the home and the record
 * deleted. `resolve` answers a source that lost the answer to its commit, as receiver.ts does.
 * At start (`recoverVmReceives`, before receiver.ts's own recovery): a committed record gets
 * its descriptors and `vm.json` (the QEMU, if it runs, is taken back with the VM); an
 * uncommitted one has its QEMU killed and its home deleted.
 */
export interface VmReceiveRequest {
  /** The source's move id. */
  readonly id: string;
  /** The VM's config on the source. */
  readonly config: VmConfig;
  readonly sourceHost: string;
  /** The home's datastore here; default: the default one. */
  readonly datastore?: string;
  /** The datastore here for each source datastore of a disk; default: `datastore`. */
  readonly datastoreMap?: Readonly<Record<string, string>>;
  /** The network here for each of the source's; default: the same name. */
  readonly networkMap?: Readonly<Record<string, string>>;
  readonly disks: readonly {
    readonly disk: string;
    readonly sizeBytes: number;
    readonly provisioning: Provisioning;
    readonly generation: number;
    readonly createdAt: string;
    /** Its datastore on the source (for `datastoreMap`). */
    readonly from: string;
  }[];
  /** The home's files (not `vm.json`), base64. */
  readonly files: readonly { readonly name: string; readonly data: string }[];
}

export interface VmReceiveTicket {
  readonly id: string;
  readonly datastore: string;
  /** One per disk, in the request's order. */
  readonly disks: readonly ReceiveTicket[];
}

interface VmReceiveRecord {
  readonly version: 1;
  readonly id: string;
  readonly vm: string;
  readonly datastore: string;
  /** As it will run here (networks mapped). */
  readonly config: VmConfig;
  readonly sourceHost: string;
  readonly receives: readonly string[];
  readonly committed: boolean;
}

interface LiveVmReceive {
  record: VmReceiveRecord;
  /** The key identity the source proved: its memory stream is encrypted with that key. */
  readonly pskIdentity: string;
  readonly datastore: Datastore;
  /** The gated exports of the disks under their own names, by disk. */
  readonly held: Map<string, WriteGate>;
}

export interface VmReceiverHost {
  readonly dataDir: string;
  readonly log: Logger;
  readonly exports: ExportTable;
  readonly receiver: Receiver;
  readonly vms: VmService;
  datastoreNamed(name: string | undefined): Datastore;
  serialize<T>(task: () => Promise<T>): Promise<T>;
  /** The pre-shared key of a peer's identity, for the memory stream's TLS (migration-tls.ts). */
  keyFor(identity: string): Buffer | undefined;
  /** Test seam (`FERRY_CRASH_AT=receive-commit`): kills the agent right after the commit point. */
  readonly isCrashAtCommit: boolean;
}

const VM_RECEIVES_DIR = 'vm-receives';
/** A home's file sent with the VM: kernel, initrd, console log. */
const HOME_FILE_MAX_BYTES = 256 * 1024 * 1024;
const RUNNING_WAIT_MS = 30_000;

export class VmReceiver {
  private readonly live = new Map<string, LiveVmReceive>();

  private readonly records: RecordFiles<VmReceiveRecord>;

  constructor(private readonly host: VmReceiverHost) {
    this.records = new RecordFiles(join(host.dataDir, VM_RECEIVES_DIR));
  }

  /** Step 1. */
  async receive(request: VmReceiveRequest, pskIdentity: string): Promise<VmReceiveTicket> {
    const name = request.config.name;
    checkName(name, 'vm');
    const config = this.configHere(request);
    return this.host.serialize(async () => {
      if (this.live.has(request.id)) {
        throw new HostError(HostErrorCode.Exists, `VM receive ${request.id} is already under way`);
      }
      const twin = this.host.vms.table.get(name);
      if (twin !== undefined) {
        throw new HostError(
          HostErrorCode.Exists,
          `a VM named ${name} already exists on this host (datastore ${twin.datastore.name})`,
        );
      }
      const datastore = this.host.datastoreNamed(request.datastore);
      const home = homePath(datastore, name);
      const record: VmReceiveRecord = {
        version: 1,
        id: request.id,
        vm: name,
        datastore: datastore.name,
        config,
        sourceHost: request.sourceHost,
        receives: request.disks.map((_, index) => `${request.id}-d${index}`),
        committed: false,
      };
      await this.records.write(record);
      const live: LiveVmReceive = { record, datastore, pskIdentity, held: new Map() };
      const tickets: ReceiveTicket[] = [];
      try {
        await mkdir(home).catch((error: unknown) => {
          if (errorCodeOf(error) !== 'EEXIST') throw error;
          throw new HostError(
            HostErrorCode.Exists,
            `${home} already exists on this host; VM ${name}'s home needs a fresh directory`,
          );
        });
        await writeHomeFiles(home, request.files);
        for (const [index, disk] of request.disks.entries()) {
          const target = request.datastoreMap?.[disk.from] ?? request.datastore;
          tickets.push(
            await this.host.receiver.receiveInQueue(
              {
                id: record.receives[index] ?? '',
                disk: disk.disk,
                sizeBytes: disk.sizeBytes,
                provisioning: disk.provisioning,
                generation: disk.generation,
                createdAt: disk.createdAt,
                sourceHost: request.sourceHost,
                ...(target === undefined ? {} : { datastore: target }),
              },
              pskIdentity,
              request.id,
            ),
          );
          await this.holdForQemu(live, disk.disk, record.receives[index] ?? '');
        }
      } catch (error) {
        await this.discard(live).catch((cleanup: unknown) => {
          this.host.log.warn({ move: request.id, err: cleanup }, 'VM receive cleanup failed');
        });
        throw error;
      }
      this.live.set(request.id, live);
      this.host.log.info(
        { move: request.id, vm: name, from: request.sourceHost, datastore: datastore.name },
        'receiving a VM',
      );
      return { id: request.id, datastore: datastore.name, disks: tickets };
    });
  }

  /**
   * Step 2: QEMU waiting for the memory; resolves with the TCP port it listens on and whether
   * the stream is TLS (with the source's key; always, when this host knows that key). Again
   * after a failed attempt: the QEMU of that attempt has exited or is killed first.
   */
  async incoming(id: string): Promise<{ port: number; tls: boolean }> {
    const live = this.liveOf(id);
    const { config } = live.record;
    const runtime = this.host.vms.runtime;
    if (runtime.isRunning(config.name)) await runtime.kill(config.name);
    await runtime.start(config, homePath(live.datastore, config.name), { incoming: true });
    if (this.live.get(id) !== live) {
      // Aborted while QEMU was starting: nothing else will stop this one.
      await runtime.kill(config.name);
      throw new HostError(HostErrorCode.NotFound, `VM receive ${id} was aborted`);
    }
    const qmp = runtime.processOf(config.name).qmp;
    try {
      await qmp.execute('migrate-set-capabilities', {
        capabilities: [{ capability: 'events', state: true }],
      });
      const key = this.host.keyFor(live.pskIdentity);
      if (key !== undefined) {
        const dir = join(runtime.filesOf(config.name).dir, 'tls');
        await useMigrationTls(qmp, dir, { identity: live.pskIdentity, key }, 'server');
      }
      await startIncoming(qmp, 'tcp:0.0.0.0:0');
      const info = await queryMigration(qmp);
      const port = listeningPort(info);
      this.host.log.info(
        { move: id, vm: config.name, port, tls: key !== undefined },
        'VM waiting for its memory',
      );
      return { port, tls: key !== undefined };
    } catch (error) {
      await runtime.kill(config.name);
      throw new HostError(
        HostErrorCode.Qemu,
        `the incoming QEMU of VM ${config.name} could not listen: ${errorMessageOf(error)}`,
        { cause: error },
      );
    }
  }

  /**
   * Step 3: the commit point of every disk of the VM. Idempotent. `consoleTail` (base64): what
   * the guest wrote on its console since the home came, appended to the home's log before this
   * host's QEMU writes there.
   */
  async commit(id: string, consoleTail = ''): Promise<ReceiveState> {
    return this.host.serialize(async (): Promise<ReceiveState> => {
      const live = this.live.get(id);
      if (live === undefined) {
        throw new HostError(
          HostErrorCode.NotFound,
          `no VM receive ${id} under way here (aborted, or lost when this agent restarted)`,
        );
      }
      if (live.record.committed) return 'committed';
      // Appended while the disks flush, not after: the guest is stopped until this answers. An
      // abort deletes the home, tail and all.
      const home = homePath(live.datastore, live.record.vm);
      const appended = appendFile(join(home, CONSOLE_LOG_FILE), Buffer.from(consoleTail, 'base64'));
      appended.catch(() => undefined);
      const committed = { ...live.record, committed: true };
      await this.host.receiver.commitAllInQueue(
        live.record.receives,
        async () => {
          await this.records.write(committed);
          live.record = committed;
          if (this.host.isCrashAtCommit) {
            this.host.log.error({ move: id }, 'crash point receive-commit: killing the agent');
            process.kill(process.pid, 'SIGKILL');
          }
        },
        (disk) => {
          const held = live.held.get(disk);
          this.host.exports.deleteIncoming(disk);
          live.held.delete(disk);
          held?.open();
        },
      );
      await registerHome(live.datastore, committed.config);
      await appended.catch((error: unknown) => {
        this.host.log.warn({ vm: committed.vm, err: error }, 'the console tail was not kept');
      });
      this.host.vms.table.add({ config: committed.config, datastore: live.datastore });
      this.host.log.info(
        { move: id, vm: committed.vm, from: committed.sourceHost },
        'received VM committed: its disks live here',
      );
      return 'committed';
    });
  }

  /** As receiver.ts's `resolve`, for the VM's commit. */
  async resolve(id: string, vm: string): Promise<ReceiveState> {
    return this.host.serialize(async (): Promise<ReceiveState> => {
      const live = this.live.get(id);
      if (live?.record.committed) return 'committed';
      if (live !== undefined) {
        await this.discard(live);
        return 'aborted';
      }
      return this.host.vms.table.get(vm) !== undefined ? 'committed' : 'aborted';
    });
  }

  /** Before the commit: drop everything. Refused once committed (`ERR_DISK_BUSY`). */
  async abort(id: string): Promise<void> {
    await this.host.serialize(async () => {
      const live = this.live.get(id);
      if (live === undefined) return;
      if (live.record.committed) {
        throw new HostError(
          HostErrorCode.DiskBusy,
          `VM receive ${id} is committed: VM ${live.record.vm}'s disks live here now`,
        );
      }
      await this.discard(live);
    });
  }

  /**
   * Step 4. `memoryMoved`: the memory migration completed, so the guest runs here (its MAC is
   * announced); false: it failed after the commit and the guest runs on at the source, over
   * the disks here (the incoming QEMU is killed and the VM unregistered here; the disks stay).
   */
  async finish(id: string, memoryMoved: boolean): Promise<{ state: string }> {
    const live = this.live.get(id);
    if (live === undefined) return { state: 'finished' };
    if (!live.record.committed) {
      throw new HostError(HostErrorCode.DiskBusy, `VM receive ${id} is not committed`);
    }
    const { vm } = live.record;
    const runtime = this.host.vms.runtime;
    let state = 'stopped';
    if (memoryMoved) {
      state = await waitForRunning(this.host.vms, vm);
      if (state === 'running') {
        await announceSelf(runtime.processOf(vm).qmp).catch((error: unknown) => {
          this.host.log.warn({ vm, err: error }, 'announce-self failed');
        });
      }
    } else {
      await runtime.kill(vm);
    }
    await this.host.serialize(async () => {
      for (const receive of live.record.receives) await this.host.receiver.finishInQueue(receive);
      if (!memoryMoved) {
        this.host.vms.table.delete(vm);
        await rm(homePath(live.datastore, vm), { recursive: true, force: true });
      }
      this.live.delete(id);
      await this.records.remove(id);
    });
    this.host.log.info({ move: id, vm, state }, 'VM receive finished');
    return { state };
  }

  /** Closes at shutdown: the QEMU of an uncommitted receive is left for `recoverVmReceives`. */
  close(): void {
    this.live.clear();
  }

  private configHere(request: VmReceiveRequest): VmConfig {
    const config = parseVmConfig(
      request.config,
      `from host ${request.sourceHost}`,
      request.config.name,
    );
    const nics = config.nics.map((nic) => {
      const network = request.networkMap?.[nic.network] ?? nic.network;
      this.host.vms.networkNamed(network);
      return { ...nic, network };
    });
    return { ...config, nics };
  }

  /** Offers the disk to this host's QEMU under its name, its changes held until the commit. */
  private async holdForQemu(live: LiveVmReceive, disk: string, receive: string): Promise<void> {
    const stack = this.host.receiver.stackOf(receive);
    if (stack === undefined) throw new Error(`receive ${receive} has no stack`);
    const held = new WriteGate(stack.top);
    this.host.exports.addIncoming({
      name: disk,
      description: `disk ${disk} of VM ${live.record.vm}, arriving (changes held until the move commits)`,
      device: held,
    });
    live.held.set(disk, held);
  }

  private async discard(live: LiveVmReceive): Promise<void> {
    const { record, datastore } = live;
    const runtime = this.host.vms.runtime;
    if (runtime.isRunning(record.vm) && this.host.vms.table.get(record.vm) === undefined) {
      await runtime.kill(record.vm);
    }
    // Held changes are never let through: the QEMU that sent them is gone, the copy deleted.
    for (const disk of live.held.keys()) this.host.exports.deleteIncoming(disk);
    live.held.clear();
    for (const receive of record.receives) await this.host.receiver.abortInQueue(receive);
    await rm(homePath(datastore, record.vm), { recursive: true, force: true });
    this.live.delete(record.id);
    await this.records.remove(record.id);
    this.host.log.info({ move: record.id, vm: record.vm }, 'VM receive aborted');
  }

  private liveOf(id: string): LiveVmReceive {
    const live = this.live.get(id);
    if (live === undefined) {
      throw new HostError(HostErrorCode.NotFound, `no VM receive ${id} under way here`);
    }
    return live;
  }
}

/** Writes the home's files the source sent, each fsynced; names are plain file names. */
async function writeHomeFiles(
  home: string,
  files: readonly { readonly name: string; readonly data: string }[],
): Promise<void> {
  for (const file of files) {
    if (!isValidName(file.name) || file.name === VM_CONFIG_FILE) {
      throw new HostError(HostErrorCode.BadPath, `${JSON.stringify(file.name)} is not a home file`);
    }
    const data = Buffer.from(file.data, 'base64');
    if (data.length > HOME_FILE_MAX_BYTES) {
      throw new HostError(HostErrorCode.BadSize, `home file ${file.name} is too large`);
    }
    const handle = await open(join(home, file.name), 'w', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
  await syncDirectory(home);
}

/** `vm.json` in a home made by `receive`: from now on the directory is the VM. */
async function registerHome(datastore: Datastore, config: VmConfig): Promise<void> {
  await writeJsonAtomic(join(homePath(datastore, config.name), VM_CONFIG_FILE), config);
}

/** The port `migrate-incoming tcp:...:0` bound, from `query-migrate`'s `socket-address`. */
function listeningPort(info: Readonly<Record<string, unknown>>): number {
  const addresses = info['socket-address'] as { port?: string }[] | undefined;
  const port = Number(addresses?.[0]?.port);
  if (!Number.isSafeInteger(port) || port <= 0) {
    throw new Error(`QEMU did not say which port it listens on (${JSON.stringify(addresses)})`);
  }
  return port;
}

async function waitForRunning(vms: VmService, vm: string): Promise<string> {
  const deadline = Date.now() + RUNNING_WAIT_MS;
  for (;;) {
    const state = await vms.runtime.powerState(vm);
    if (state === 'running' || state === 'stopped' || Date.now() > deadline) return state;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/**
 * At start, before receiver.ts's recovery and before the datastores are opened: every VM
 * receive a restart interrupted. Committed: descriptors and `vm.json` written where missing (the
 * scan then serves the disks and takes the QEMU back). Not committed: its QEMU killed (found by
 * its pid file, checked to be that VM's QEMU by its QMP socket), its home deleted; receiver.ts deletes the
 * disks' partial copies.
 */
export async function recoverVmReceives(
  dataDir: string,
  datastoreNamed: (name: string) => Datastore | undefined,
  log: Logger,
): Promise<string[]> {
  const dir = join(dataDir, VM_RECEIVES_DIR);
  return new RecordFiles<VmReceiveRecord>(dir).settle('VM receive', log, async (record) => {
    const datastore = datastoreNamed(record.datastore);
    if (datastore === undefined) throw new Error(`datastore ${record.datastore} is not known`);
    if (record.committed) {
      await commitReceivesAtStart(dataDir, record.receives, datastoreNamed);
      await registerHome(datastore, record.config);
      return `VM ${record.vm} received from host ${record.sourceHost} had committed before a restart; it lives here`;
    }
    const runDir = join(dataDir, RUN_DIR, record.vm);
    await QemuProcess.killStale({
      pidFile: join(runDir, QEMU_PID_FILE),
      qmpSocket: join(runDir, QMP_SOCKET_FILE),
    });
    await rm(homePath(datastore, record.vm), { recursive: true, force: true });
    return `receive of VM ${record.vm} from host ${record.sourceHost} was cut by a restart before its commit; its copy here is deleted (the source still runs it)`;
  });
}
