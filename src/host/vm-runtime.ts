import { appendFile, mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import { HostError, HostErrorCode } from './errors.js';
import { type KvmProbe, probeKvm } from './kvm-probe.js';
import type { NetworkRegistry } from './networks.js';
import type { QemuSpec } from './qemu/qemu-command-line.js';
import { QemuProcess } from './qemu/qemu-process.js';
import { createTap, deleteTap, tapName } from './taps.js';
import type { VmConfig } from './vm-config.js';

/**
 * The QEMU processes of this host's VMs (issue 8). A running VM is a daemonized
 * `qemu-system-x86_64` with its serial console appended to `console.log` in the VM's home, and
 * its pid file and QMP socket in `<dataDir>/run/<vm>/`: not in the home, because a home moves
 * while the VM runs (a live move to another datastore) and a listening socket cannot move with
 * it. At such a move the console is switched to the new home (`moveConsole`).
 *
 * Each disk is attached through this host's own NBD export of it, on the agent's local Unix
 * socket (nbd/server.ts, `isLocal`), as virtio-blk in the config's order (/dev/vda first); each
 * NIC is a tap on its network's bridge (taps.ts). Nothing lives only in the agent: a restarted
 * agent finds each VM's QEMU from its pid file, checks it is that VM's QEMU, and takes it back
 * over QMP (`adopt`). The agent closing never stops a guest; QEMU's NBD client reconnects to
 * the agent's socket when it comes back (`reconnect-delay`), and the guest's I/O waits meanwhile.
 */
export const QEMU_PID_FILE = 'qemu.pid';
export const QMP_SOCKET_FILE = 'qmp.sock';
export const CONSOLE_LOG_FILE = 'console.log';
/** Under the data directory: a folder per running VM, for its pid file and QMP socket. */
export const RUN_DIR = 'run';
/** `sun_path` holds 108 bytes, the terminating NUL included. */
const UNIX_PATH_MAX_BYTES = 107;

/** What a running VM's status is, as QEMU says (`query-status`), or `stopped`. */
export type VmPowerState = string;

export interface VmRuntimeOptions {
  /** The agent's local NBD socket (`<dataDir>/nbd.sock`). */
  readonly nbdSocket: string;
  /** Where each running VM's pid file and QMP socket go (`<dataDir>/run`). */
  readonly runDir: string;
  readonly networks: NetworkRegistry;
  readonly log: Logger;
  /** Default `qemu-system-x86_64`; tests may name another. */
  readonly qemuBinary?: string;
}

/** How to start a VM beyond its config. */
export interface StartOptions {
  /**
   * Start as the destination of a live migration: QEMU waits for `migrate-incoming` (`defer`)
   * and the guest runs only once the memory has arrived.
   */
  readonly incoming?: boolean;
}

interface RunningVm {
  readonly process: QemuProcess;
  readonly taps: readonly string[];
}

const STOP_TIMEOUT_MS = 30_000;
/**
 * How long taking a QEMU back may wait for its QMP: a QEMU whose disk I/O waits for the agent's
 * socket (it was stopping the guest, say, when the agent died) answers only once that I/O is
 * done, and QEMU gives the socket `reconnect-delay` to come back.
 */
const ADOPT_TIMEOUT_MS = 90_000;
/** The serial console's chardev id in QEMU's command line (qemu-command-line.ts). */
const SERIAL_CHARDEV = 'serial0';
const NBD_RECONNECT_DELAY_SECONDS = 60;

export class VmRuntime {
  private readonly running = new Map<string, RunningVm>();
  /** Each QEMU's cleanup once it exited, shared by everyone waiting for that exit. */
  private readonly forgetting = new WeakMap<RunningVm, Promise<void>>();
  /** What `--accel auto` found of KVM here, asked once. */
  private kvm: Promise<KvmProbe> | undefined;
  /** VMs whose QEMU a restarted agent is taking back: not to be started meanwhile. */
  private readonly adopting = new Set<string>();
  private readonly options: VmRuntimeOptions;

  constructor(options: VmRuntimeOptions) {
    this.options = options;
  }

  /** Whether VM `name` has a QEMU process this runtime drives. */
  isRunning(name: string): boolean {
    return this.running.has(name);
  }

  /** The QEMU of VM `name`; `ERR_VM_STOPPED` if it has none. */
  processOf(name: string): QemuProcess {
    const vm = this.running.get(name);
    if (vm === undefined) {
      throw new HostError(
        HostErrorCode.VmStopped,
        `VM ${name} is not running; start it with: ferry vm start ${name}`,
      );
    }
    return vm.process;
  }

  /** QEMU's run state of VM `name` (`running`, `paused`, `inmigrate`...), or `stopped`. */
  async powerState(name: string): Promise<VmPowerState> {
    const vm = this.running.get(name);
    if (vm === undefined) return this.adopting.has(name) ? 'taking-back' : 'stopped';
    return vm.process.status().catch(() => 'unknown');
  }

  pidOf(name: string): number | null {
    return this.running.get(name)?.process.pid ?? null;
  }

  /** Starts QEMU for `config` with its files in `home`; rejects with QEMU's own words. */
  async start(config: VmConfig, home: string, options: StartOptions = {}): Promise<void> {
    if (this.running.has(config.name)) {
      throw new HostError(HostErrorCode.VmRunning, `VM ${config.name} is already running`);
    }
    if (this.adopting.has(config.name)) {
      throw new HostError(
        HostErrorCode.VmRunning,
        `VM ${config.name}'s QEMU is being taken back after the agent's restart; wait for it`,
      );
    }
    const taps: string[] = [];
    try {
      for (const [index, nic] of config.nics.entries()) {
        const networkName = nic.network;
        const network = this.options.networks.get(networkName);
        if (network === undefined) {
          throw new HostError(
            HostErrorCode.NotFound,
            `VM ${config.name}'s NIC ${index} is on network ${networkName}, which this host does not have; add it with: ferry network add ${networkName} --bridge BRIDGE`,
          );
        }
        const tap = tapName(config.name, index);
        await createTap(tap, network.bridge);
        taps.push(tap);
      }
      const files = this.filesOf(config.name);
      await mkdir(files.dir, { recursive: true });
      const spec = await this.specOf(config, home, taps, options.incoming === true);
      // A fresh boot starts its console on a line of its own; a live move's incoming QEMU
      // carries on the guest's line where the source left it.
      if (options.incoming !== true) await endConsoleLine(spec.serialLog);
      await rm(files.pidFile, { force: true });
      const process = await QemuProcess.launch(spec, {
        ...(this.options.qemuBinary === undefined ? {} : { binary: this.options.qemuBinary }),
      }).catch((error: unknown) => {
        throw new HostError(
          HostErrorCode.Qemu,
          `QEMU did not start VM ${config.name}: ${errorMessageOf(error)}`,
          { cause: error },
        );
      });
      this.track(config.name, { process, taps });
      this.options.log.info(
        { vm: config.name, qemuPid: process.pid, incoming: options.incoming === true },
        'VM started',
      );
    } catch (error) {
      for (const tap of taps) await deleteTap(tap);
      throw error;
    }
  }

  /**
   * Takes back the QEMU a previous agent started for `config`, if it still runs (its pid file
   * names a live QEMU of this VM); otherwise cleans what it left. Resolves whether it runs.
   */
  async adopt(config: VmConfig): Promise<boolean> {
    this.adopting.add(config.name);
    try {
      return await this.attach(config);
    } finally {
      this.adopting.delete(config.name);
    }
  }

  isAdopting(name: string): boolean {
    return this.adopting.has(name);
  }

  /** Marks VM `name` as being taken back, before `adopt` runs (which may be later). */
  willAdopt(name: string): void {
    this.adopting.add(name);
  }

  private async attach(config: VmConfig): Promise<boolean> {
    const { pidFile, qmpSocket } = this.filesOf(config.name);
    const attaching = QemuProcess.attach({ pidFile, qmpSocket, timeoutMs: ADOPT_TIMEOUT_MS });
    const process = await attaching.catch((error: unknown) => {
      this.options.log.warn(
        { vm: config.name, err: error },
        `VM ${config.name}'s QEMU could not be taken back: ${errorMessageOf(error)}`,
      );
      return undefined;
    });
    const taps = config.nics.map((_, index) => tapName(config.name, index));
    if (process === undefined) {
      for (const tap of taps) await deleteTap(tap);
      return false;
    }
    this.track(config.name, { process, taps });
    this.options.log.info({ vm: config.name, qemuPid: process.pid }, 'VM taken back');
    return true;
  }

  /**
   * Stops VM `name`: ACPI power-down, and after `timeoutMs` (or at once with `force`) QEMU is
   * told to quit, which flushes its disks. Resolves once the process is gone.
   */
  async stop(name: string, options: { force?: boolean; timeoutMs?: number } = {}): Promise<void> {
    const process = this.processOf(name);
    if (options.force === true) await process.quit();
    else await process.powerdown({ timeoutMs: options.timeoutMs ?? STOP_TIMEOUT_MS });
    await this.exited(name);
  }

  /** SIGKILLs VM `name`'s QEMU (a migration destination that must not run) and cleans up. */
  async kill(name: string): Promise<void> {
    const vm = this.running.get(name);
    if (vm === undefined) return;
    await vm.process.kill();
    await this.exited(name);
  }

  /** Resolves once VM `name`'s QEMU is gone and its taps deleted. */
  async exited(name: string): Promise<void> {
    const vm = this.running.get(name);
    if (vm === undefined) return;
    await vm.process.exited;
    await this.forget(name, vm);
  }

  /**
   * The VM's home moved (a live move to another datastore): QEMU appends the console to the
   * log in the new home from now on.
   */
  async moveConsole(name: string, home: string): Promise<void> {
    const vm = this.running.get(name);
    if (vm === undefined) return;
    await vm.process.qmp.execute('chardev-change', {
      id: SERIAL_CHARDEV,
      backend: { type: 'file', data: { out: join(home, CONSOLE_LOG_FILE), append: true } },
    });
  }

  /** The pid file and QMP socket of VM `name`, and the directory that holds them. */
  filesOf(name: string): { dir: string; pidFile: string; qmpSocket: string } {
    const dir = join(this.options.runDir, name);
    const qmpSocket = join(dir, QMP_SOCKET_FILE);
    if (Buffer.byteLength(qmpSocket) > UNIX_PATH_MAX_BYTES) {
      throw new HostError(
        HostErrorCode.BadVmConfig,
        `VM ${name}'s QMP socket ${qmpSocket} is longer than a Unix socket path may be (${UNIX_PATH_MAX_BYTES} bytes); use a shorter --data directory or VM name`,
      );
    }
    return { dir, pidFile: join(dir, QEMU_PID_FILE), qmpSocket };
  }

  /** Lets go of every QEMU without stopping any (the agent is closing: they run on). */
  async release(): Promise<void> {
    for (const vm of this.running.values()) await vm.process.release();
    this.running.clear();
  }

  private track(name: string, vm: RunningVm): void {
    this.running.set(name, vm);
    void vm.process.exited.then(() => this.forget(name, vm));
  }

  /** Once per QEMU, however many wait for its exit: each waiter gets the same cleanup. */
  private forget(name: string, vm: RunningVm): Promise<void> {
    let cleanup = this.forgetting.get(vm);
    if (cleanup === undefined) {
      cleanup = (async () => {
        for (const tap of vm.taps) await deleteTap(tap);
        // Its pid file, socket and any migration key: nothing of a stopped VM stays behind.
        await rm(this.filesOf(name).dir, { recursive: true, force: true }).catch(() => undefined);
        if (this.running.get(name) === vm) this.running.delete(name);
        this.options.log.info({ vm: name }, 'VM stopped');
      })();
      this.forgetting.set(vm, cleanup);
    }
    return cleanup;
  }

  /** `auto`: KVM where it works (kvm-probe.ts, asked once), TCG otherwise. */
  private async accelOf(config: VmConfig): Promise<'kvm' | 'tcg'> {
    if (config.accel === 'tcg') return 'tcg';
    this.kvm ??= probeKvm(this.options.qemuBinary ?? 'qemu-system-x86_64').then((probe) => {
      this.options.log.info({ kvm: probe.isUsable, why: probe.why }, 'KVM probed');
      return probe;
    });
    const probe = await this.kvm;
    if (probe.isUsable) return 'kvm';
    if (config.accel === 'kvm') {
      throw new HostError(
        HostErrorCode.BadVmConfig,
        `VM ${config.name} asks for KVM, but it does not work on this host (${probe.why}); use --accel tcg or auto`,
      );
    }
    return 'tcg';
  }

  private async specOf(
    config: VmConfig,
    home: string,
    taps: readonly string[],
    incoming: boolean,
  ): Promise<QemuSpec> {
    return {
      name: config.name,
      memoryBytes: config.memoryBytes,
      cpus: config.cpus,
      accel: await this.accelOf(config),
      ...(config.kernel === null ? {} : { kernel: join(home, config.kernel) }),
      ...(config.initrd === null ? {} : { initrd: join(home, config.initrd) }),
      ...(config.append === null ? {} : { append: config.append }),
      disks: config.disks.map((disk, index) => ({
        node: `disk${index}`,
        nbdSocket: this.options.nbdSocket,
        exportName: disk,
        bus: 'virtio' as const,
        // An agent restart closes the socket: the guest's I/O waits this long for it to return.
        reconnectDelaySeconds: NBD_RECONNECT_DELAY_SECONDS,
      })),
      nics: config.nics.map((nic, index) => ({
        id: `nic${index}`,
        tap: taps[index] ?? '',
        mac: nic.mac,
      })),
      qmpSocket: this.filesOf(config.name).qmpSocket,
      serialLog: join(home, CONSOLE_LOG_FILE),
      pidFile: this.filesOf(config.name).pidFile,
      ...(incoming ? { incoming: 'defer' } : {}),
    };
  }
}

/**
 * A QEMU stopped by force (or a host that lost power) may leave its console's last line cut in
 * the middle; the next boot's first line would be glued to it. Ends such a line.
 */
export async function endConsoleLine(path: string): Promise<void> {
  let last: number | undefined;
  try {
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      if (size === 0) return;
      const byte = Buffer.alloc(1);
      await handle.read(byte, 0, 1, size - 1);
      last = byte[0];
    } finally {
      await handle.close();
    }
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT') return;
    throw error;
  }
  if (last !== 0x0a) await appendFile(path, '\n');
}
