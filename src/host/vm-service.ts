import { copyFile, open, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Datastore } from './datastore.js';
import { HostError, HostErrorCode } from './errors.js';
import type { DiskEntry } from './export-table.js';
import { checkName } from './names.js';
import type { Network, NetworkRegistry } from './networks.js';
import {
  type VmAccel,
  type VmConfig,
  type VmNic,
  type VmSettings,
  vmConfigOf,
} from './vm-config.js';
import { createHome, homePath, removeHome, scanHomes } from './vm-home.js';
import { CONSOLE_LOG_FILE, type VmPowerState, type VmRuntime } from './vm-runtime.js';
import { type VmEntry, VmTable } from './vm-table.js';

/**
 * The VMs of this host: their homes (vm-home.ts), their configs (vm-config.ts), whether they run
 * (vm-runtime.ts), and the networks their NICs join (networks.ts). The agent owns one and
 * delegates every `ferry vm` and `ferry network` command to it; moves stay in the agent, which
 * asks this what a move may touch (`ownerOf`, `checkStopped`).
 *
 * Changes run in the agent's change queue (`serialize`), one at a time, as the agent's do.
 */
export interface CreateVmRequest extends VmSettings {
  readonly name: string;
  /** Where the home directory goes; default: the first disk's datastore. */
  readonly datastore?: string;
  /** Its disks in bus order; one with a size is created (thin) when missing. */
  readonly disks: readonly (string | { readonly name: string; readonly sizeBytes?: number })[];
  /** Absolute paths on this host; copied into the home, so they move with the VM. */
  readonly kernel?: string;
  readonly initrd?: string;
}

export interface VmInfo {
  readonly name: string;
  /** The datastore of the VM's home directory. */
  readonly datastore: string;
  /** Absolute path of the home directory. */
  readonly home: string;
  readonly disks: readonly string[];
  /** Sum of the sizes of the VM's disks that are served. */
  readonly sizeBytes: number;
  readonly createdAt: string;
  readonly memoryBytes: number;
  readonly cpus: number;
  readonly accel: VmAccel;
  readonly kernel: string | null;
  readonly initrd: string | null;
  readonly append: string | null;
  readonly nics: readonly VmNic[];
  /** `stopped`, or QEMU's own run state: `running`, `paused`, `inmigrate`, `postmigrate`... */
  readonly state: VmPowerState;
  readonly pid: number | null;
  /** The serial console's log, in the home. */
  readonly console: string;
}

/** What the VM service needs of its agent. */
export interface VmServiceHost {
  readonly log: Logger;
  /** The served local disk `name` (`ERR_NOT_FOUND`, or `ERR_REMOTE_DISK` for a pass-through). */
  entryOf(name: string): DiskEntry;
  datastoreNamed(name: string | undefined): Datastore;
  createDisk(name: string, sizeBytes: number, datastore: Datastore): Promise<DiskEntry>;
  /** Throws `ERR_DISK_BUSY` if a move holds the VM or one of its disks. */
  checkNotMoving(vm: VmEntry): void;
  serialize<T>(task: () => Promise<T>): Promise<T>;
  warn(fields: object, message: string): void;
}

const BOOT_FILE_MAX_BYTES = 256 * 1024 * 1024;
/** `ferry vm log` shows at most this much of the end of the console. */
export const CONSOLE_TAIL_MAX_BYTES = 4 * 1024 * 1024;

export class VmService {
  readonly table = new VmTable();
  /** Resolves once the agent serves its disks: QEMUs are taken back only then (`adoptLater`). */
  private readonly serving: Promise<void>;
  private markServing: () => void = () => {};
  private readonly adoptions = new Set<Promise<unknown>>();

  constructor(
    private readonly host: VmServiceHost,
    readonly runtime: VmRuntime,
    readonly networks: NetworkRegistry,
  ) {
    this.serving = new Promise((resolve) => {
      this.markServing = resolve;
    });
  }

  /**
   * The agent serves its disks (it has opened): QEMUs found at start are taken back now. Not
   * before: a QEMU whose disk I/O waits for the agent's socket cannot answer QMP until then.
   */
  nowServing(): void {
    this.markServing();
  }

  /** Resolves when every QEMU found so far has been taken back (or found gone). */
  async whenAdopted(): Promise<void> {
    await Promise.all([...this.adoptions]);
  }

  /** Registers a VM: its home with its config and boot files, naming disks (made if sized). */
  async create(request: CreateVmRequest): Promise<VmInfo> {
    checkName(request.name, 'vm');
    return this.host.serialize(async () => {
      const existing = this.table.get(request.name);
      if (existing) {
        throw new HostError(
          HostErrorCode.Exists,
          `VM ${request.name} already exists in datastore ${existing.datastore.name}`,
        );
      }
      const wanted = request.disks.map((disk) =>
        typeof disk === 'string' ? { name: disk } : disk,
      );
      const names = this.checkDisks(wanted);
      for (const nic of request.nics ?? []) this.networkNamed(nic.network);
      for (const file of [request.kernel, request.initrd]) {
        if (file !== undefined) await checkBootFile(file);
      }
      if (request.initrd !== undefined && request.kernel === undefined) {
        throw new HostError(HostErrorCode.BadVmConfig, 'an --initrd needs a --kernel');
      }
      const config = vmConfigOf(request.name, names, request, {
        kernel: request.kernel === undefined ? null : 'vmlinuz',
        initrd: request.initrd === undefined ? null : 'initrd.img',
      });
      const datastore = this.homeDatastore(request, wanted);
      const created: string[] = [];
      for (const disk of wanted) {
        if (disk.sizeBytes === undefined || this.isServed(disk.name)) continue;
        await this.host.createDisk(disk.name, disk.sizeBytes, datastore);
        created.push(disk.name);
      }
      await createHome(datastore, config);
      const home = homePath(datastore, config.name);
      try {
        if (request.kernel !== undefined) await copyFile(request.kernel, join(home, 'vmlinuz'));
        if (request.initrd !== undefined) await copyFile(request.initrd, join(home, 'initrd.img'));
      } catch (error) {
        await removeHome(home);
        throw error;
      }
      const entry = { config, datastore };
      this.table.add(entry);
      this.host.log.info(
        { vm: request.name, datastore: datastore.name, disks: names, created },
        'VM created',
      );
      return this.describe(entry);
    });
  }

  async list(): Promise<VmInfo[]> {
    return Promise.all(this.table.all().map((entry) => this.describe(entry)));
  }

  async get(name: string): Promise<VmInfo> {
    return this.describe(this.entryOf(name));
  }

  /** Unregisters VM `name`: deletes its home directory; its disks stay and are served. */
  async remove(name: string): Promise<void> {
    await this.host.serialize(async () => {
      const vm = this.entryOf(name);
      this.checkStopped(vm, 'remove it');
      this.host.checkNotMoving(vm);
      await removeHome(homePath(vm.datastore, name));
      this.table.delete(name);
      this.host.log.info({ vm: name, datastore: vm.datastore.name }, 'VM removed');
    });
  }

  /** Starts VM `name`'s QEMU with its disks on this host's exports. */
  async start(name: string): Promise<VmInfo> {
    return this.host.serialize(async () => {
      const vm = this.entryOf(name);
      this.host.checkNotMoving(vm);
      for (const disk of vm.config.disks) this.host.entryOf(disk);
      await this.runtime.start(vm.config, homePath(vm.datastore, name));
      return this.describe(vm);
    });
  }

  /** Stops VM `name`: power-down, then quit after `timeoutMs`; `force` quits at once. */
  async stop(name: string, options: { force?: boolean; timeoutMs?: number }): Promise<VmInfo> {
    const vm = this.entryOf(name);
    this.host.checkNotMoving(vm);
    await this.runtime.stop(name, options);
    return this.describe(vm);
  }

  /** The end of VM `name`'s serial console log (at most `tailBytes`), as text. */
  async consoleLog(name: string, tailBytes = CONSOLE_TAIL_MAX_BYTES): Promise<string> {
    const vm = this.entryOf(name);
    const path = join(homePath(vm.datastore, name), CONSOLE_LOG_FILE);
    let handle: Awaited<ReturnType<typeof open>>;
    try {
      handle = await open(path, 'r');
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') return '';
      throw error;
    }
    try {
      const { size } = await handle.stat();
      const length = Math.min(size, Math.max(0, Math.min(tailBytes, CONSOLE_TAIL_MAX_BYTES)));
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, size - length);
      return buffer.toString('utf8');
    } finally {
      await handle.close();
    }
  }

  async addNetwork(name: string, bridge: string): Promise<Network> {
    return this.host.serialize(() => this.networks.add(name, bridge));
  }

  async removeNetwork(name: string): Promise<void> {
    await this.host.serialize(async () => {
      const user = this.table
        .all()
        .find((vm) => vm.config.nics.some((nic) => nic.network === name));
      await this.networks.remove(name, user?.config.name);
    });
  }

  /** The VM disk `disk` belongs to, if any. */
  ownerOf(disk: string): VmEntry | undefined {
    return this.table.ownerOf(disk);
  }

  entryOf(name: string): VmEntry {
    const vm = this.table.get(name);
    if (!vm) throw new HostError(HostErrorCode.NotFound, `no VM named ${name}`);
    return vm;
  }

  /** `ERR_VM_RUNNING` if VM `vm` runs: `what` says what the caller wanted to do. */
  checkStopped(vm: VmEntry, what: string): void {
    if (this.runtime.isRunning(vm.config.name)) {
      throw new HostError(
        HostErrorCode.VmRunning,
        `VM ${vm.config.name} is running; stop it first (ferry vm stop ${vm.config.name}) to ${what}`,
      );
    }
  }

  /**
   * Registers the VM homes of `datastore`, skipping with a warning a bad one or a duplicate, and
   * takes back the QEMU of each one that still runs.
   */
  async open(datastore: Datastore): Promise<void> {
    const scan = await scanHomes(datastore);
    for (const problem of scan.problems) {
      this.host.warn({ datastore: datastore.name, file: problem.file }, problem.message);
    }
    for (const config of scan.configs) {
      const twin = this.table.get(config.name);
      const owned = config.disks.find((disk) => this.table.ownerOf(disk) !== undefined);
      if (twin || owned !== undefined) {
        const why = twin
          ? `a VM of that name is in datastore ${twin.datastore.name}`
          : `its disk ${owned} belongs to another VM`;
        this.host.warn(
          { datastore: datastore.name, vm: config.name },
          `VM ${config.name} in datastore ${datastore.name} is skipped: ${why}`,
        );
        continue;
      }
      this.table.add({ config, datastore });
      this.adoptLater(config);
    }
  }

  private adoptLater(config: VmConfig): void {
    this.runtime.willAdopt(config.name);
    const adoption = this.serving
      .then(() => this.runtime.adopt(config))
      .catch((error: unknown) => {
        this.host.log.error({ vm: config.name, err: error }, 'taking a QEMU back failed');
      });
    this.adoptions.add(adoption);
    void adoption.finally(() => this.adoptions.delete(adoption));
  }

  async describe(entry: VmEntry): Promise<VmInfo> {
    const { config, datastore } = entry;
    const sizeBytes = config.disks.reduce((sum, disk) => {
      try {
        return sum + this.host.entryOf(disk).descriptor.sizeBytes;
      } catch {
        return sum;
      }
    }, 0);
    const home = homePath(datastore, config.name);
    return {
      name: config.name,
      datastore: datastore.name,
      home,
      disks: config.disks,
      sizeBytes,
      createdAt: config.createdAt,
      memoryBytes: config.memoryBytes,
      cpus: config.cpus,
      accel: config.accel,
      kernel: config.kernel,
      initrd: config.initrd,
      append: config.append,
      nics: config.nics,
      state: await this.runtime.powerState(config.name),
      pid: this.runtime.pidOf(config.name),
      console: join(home, CONSOLE_LOG_FILE),
    };
  }

  /** The network named `name` of this host; `ERR_NOT_FOUND` saying how to add it. */
  networkNamed(name: string): Network {
    const network = this.networks.get(name);
    if (network === undefined) {
      throw new HostError(
        HostErrorCode.NotFound,
        `no network named ${name}; add it with: ferry network add ${name} --bridge BRIDGE`,
      );
    }
    return network;
  }

  /** The disk names of a new VM, checked: at least one, no repeats, none another VM's. */
  private checkDisks(disks: readonly { name: string; sizeBytes?: number }[]): string[] {
    const names = disks.map((disk) => disk.name);
    if (names.length === 0 || new Set(names).size !== names.length) {
      throw new HostError(
        HostErrorCode.BadVmDisks,
        `a VM needs one or more disks, each named once; got ${JSON.stringify(names)}`,
      );
    }
    for (const disk of disks) {
      checkName(disk.name, 'disk');
      // A disk given a size may be made; one without must exist.
      if (disk.sizeBytes === undefined || this.isServed(disk.name)) this.host.entryOf(disk.name);
      const owner = this.table.ownerOf(disk.name);
      if (owner) {
        throw new HostError(
          HostErrorCode.Exists,
          `disk ${disk.name} already belongs to VM ${owner.config.name}`,
        );
      }
    }
    return names;
  }

  private isServed(disk: string): boolean {
    try {
      this.host.entryOf(disk);
      return true;
    } catch (error) {
      if (errorCodeOf(error) === HostErrorCode.NotFound) return false;
      throw error;
    }
  }

  private homeDatastore(request: CreateVmRequest, disks: readonly { name: string }[]): Datastore {
    if (request.datastore !== undefined) return this.host.datastoreNamed(request.datastore);
    const first = disks[0];
    if (first !== undefined && this.isServed(first.name)) {
      return this.host.entryOf(first.name).datastore;
    }
    return this.host.datastoreNamed(undefined);
  }
}

/** A kernel or initrd to copy into a home: an absolute path to a regular file of sane size. */
async function checkBootFile(file: string): Promise<void> {
  if (!isAbsolute(file)) {
    throw new HostError(HostErrorCode.BadPath, `${file} is not an absolute path on the agent host`);
  }
  const info = await stat(file).catch((error: unknown) => {
    throw new HostError(HostErrorCode.BadPath, `${file}: ${errorMessageOf(error)}`);
  });
  if (!info.isFile() || info.size > BOOT_FILE_MAX_BYTES) {
    throw new HostError(
      HostErrorCode.BadPath,
      `${file} is not a regular file of at most ${BOOT_FILE_MAX_BYTES / (1024 * 1024)} MiB`,
    );
  }
}
