import { isAbsolute } from 'node:path';
import { QemuError, QemuErrorCode } from './qemu-errors.js';

/**
 * The command line of one VM's QEMU, as a pure function of its spec, so that a source and a
 * destination of a live migration built from the same spec present the same machine to the
 * guest (same machine type, same devices in the same order, hence the same PCI addresses), and
 * so that the argv can be checked against a golden copy.
 *
 * Choices, and why:
 * - `-machine q35` (not `pc`): PCIe, the type libvirt and the clouds create new x86 guests
 *   with; virtio devices sit on the root bus as PCIe endpoints. `q35` is an alias of the newest
 *   versioned type (pc-q35-7.2 here); a migration between QEMU versions needs both ends on the
 *   same *versioned* type, so a caller that migrates across versions passes `machine`.
 * - `-nodefaults -no-user-config -display none`: only the devices listed here exist, and no
 *   host file changes the machine, so the machine is what the spec says and nothing more.
 * - The serial port writes to a file chardev with `append=on` (accepted by QEMU 7.2): the
 *   log of a VM survives a restart of its QEMU (and is where a guest's last words are).
 * - QMP on a Unix socket with `server=on,wait=off`: QEMU starts without waiting for a client,
 *   and the agent may (re)connect at any time (one client at a time).
 * - `-daemonize` with `-pidfile`: QEMU forks, reports start-up errors on the original stderr,
 *   and its first process exits only once the VM is set up; the VM then outlives the agent.
 *   QEMU locks the pid file, so a second QEMU with the same pid file refuses to start.
 * - Disks are `-blockdev` in JSON syntax (no escaping of paths) over NBD on a Unix socket,
 *   attached as virtio-blk-pci in list order: the first is /dev/vda, the next /dev/vdb, ...
 * - No `-cpu`: the default model is the same on every host, so the VM can migrate between
 *   hosts whose CPUs differ (`-cpu host` would tie it to one CPU model).
 */

export interface QemuDiskSpec {
  /** Block node name, also used for the device id (`NODE-blk`): e.g. `disk0`. */
  readonly node: string;
  /** Unix socket of the NBD server that serves the disk. */
  readonly nbdSocket: string;
  readonly exportName: string;
  readonly bus: 'virtio';
  /**
   * Seconds QEMU keeps the guest's I/O waiting while it reconnects to a lost NBD server (its
   * `reconnect-delay`); left out, an NBD server restart fails the guest's I/O at once.
   */
  readonly reconnectDelaySeconds?: number;
}

export interface QemuNicSpec {
  /** Netdev id; the device id is `ID-nic`. */
  readonly id: string;
  /** Name of an existing tap device (as root, QEMU creates a missing one; it is then gone when QEMU exits). */
  readonly tap: string;
  readonly mac: string;
}

export interface QemuSpec {
  readonly name: string;
  readonly memoryBytes: number;
  readonly cpus: number;
  readonly accel: 'kvm' | 'tcg';
  /** Default `q35`; see the note above on versioned types and migration. */
  readonly machine?: string;
  readonly kernel?: string;
  readonly initrd?: string;
  readonly append?: string;
  readonly disks: readonly QemuDiskSpec[];
  readonly nics: readonly QemuNicSpec[];
  readonly qmpSocket: string;
  readonly serialLog: string;
  readonly pidFile: string;
  /** `defer` (then `migrate-incoming` over QMP) or a URI such as `tcp:0.0.0.0:PORT`. */
  readonly incoming?: string;
  /** `-S`: the CPUs do not run until `cont`. */
  readonly startPaused?: boolean;
}

const MIB = 1024 * 1024;
/** QEMU's own rule for ids (util/id.c, id_wellformed): a letter, then letters, digits, `-._`. */
const ID_PATTERN = /^[A-Za-z][A-Za-z0-9_.-]*$/;
/** Block node names are stored in a 32-byte array, NUL included (block_int-common.h). */
const NODE_NAME_MAX_CHARS = 31;
/** Linux IFNAMSIZ is 16, NUL included. */
const TAP_PATTERN = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const CPUS_MAX = 288;

/**
 * The argv (without the binary) that starts the VM described by `spec`. Throws ERR_QEMU_SPEC,
 * naming the field, for a spec QEMU would refuse or misread.
 */
export function qemuArgs(spec: QemuSpec): string[] {
  checkSpec(spec);
  const args = [
    '-name',
    `guest=${escapeOptionValue(spec.name)}`,
    '-machine',
    spec.machine ?? 'q35',
    '-accel',
    spec.accel,
    '-m',
    `${spec.memoryBytes / MIB}M`,
    '-smp',
    String(spec.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-chardev',
    `file,id=serial0,path=${escapeOptionValue(spec.serialLog)},append=on`,
    '-serial',
    'chardev:serial0',
    '-qmp',
    `unix:${escapeOptionValue(spec.qmpSocket)},server=on,wait=off`,
    '-pidfile',
    spec.pidFile,
    '-daemonize',
  ];
  if (spec.startPaused === true) args.push('-S');
  if (spec.kernel !== undefined) args.push('-kernel', spec.kernel);
  if (spec.initrd !== undefined) args.push('-initrd', spec.initrd);
  if (spec.append !== undefined) args.push('-append', spec.append);
  for (const disk of spec.disks) args.push(...diskArgs(disk));
  for (const nic of spec.nics) args.push(...nicArgs(nic));
  if (spec.incoming !== undefined) args.push('-incoming', spec.incoming);
  return args;
}

/**
 * QEMU's option lists (`key=value,key=value`) take a literal comma in a value as `,,`
 * (docs/system/invocation: "commas in values must be doubled").
 */
export function escapeOptionValue(value: string): string {
  return value.replaceAll(',', ',,');
}

function diskArgs(disk: QemuDiskSpec): string[] {
  const blockdev: Record<string, unknown> = {
    driver: 'nbd',
    'node-name': disk.node,
    server: { type: 'unix', path: disk.nbdSocket },
    export: disk.exportName,
  };
  if (disk.reconnectDelaySeconds !== undefined) {
    blockdev['reconnect-delay'] = disk.reconnectDelaySeconds;
  }
  return [
    '-blockdev',
    JSON.stringify(blockdev),
    '-device',
    `virtio-blk-pci,drive=${disk.node},id=${disk.node}-blk`,
  ];
}

function nicArgs(nic: QemuNicSpec): string[] {
  return [
    '-netdev',
    `tap,id=${nic.id},ifname=${nic.tap},script=no,downscript=no`,
    '-device',
    `virtio-net-pci,netdev=${nic.id},mac=${nic.mac.toLowerCase()},id=${nic.id}-nic`,
  ];
}

function checkSpec(spec: QemuSpec): void {
  check(spec.name.length > 0, 'name', 'must not be empty');
  check(
    Number.isSafeInteger(spec.memoryBytes) && spec.memoryBytes > 0 && spec.memoryBytes % MIB === 0,
    'memoryBytes',
    `must be a positive multiple of 1 MiB, got ${spec.memoryBytes}`,
  );
  check(
    Number.isInteger(spec.cpus) && spec.cpus >= 1 && spec.cpus <= CPUS_MAX,
    'cpus',
    `must be an integer from 1 to ${CPUS_MAX}, got ${spec.cpus}`,
  );
  check(spec.initrd === undefined || spec.kernel !== undefined, 'initrd', 'needs a kernel');
  // A daemonized QEMU changes its directory to / (os-posix.c, os_setup_post), so a relative
  // path would name another file when QEMU reopens it (an NBD reconnect, a log reopen).
  const paths: [string, string | undefined][] = [
    ['qmpSocket', spec.qmpSocket],
    ['serialLog', spec.serialLog],
    ['pidFile', spec.pidFile],
    ['kernel', spec.kernel],
    ['initrd', spec.initrd],
    ...spec.disks.map((d, i): [string, string] => [`disks[${i}].nbdSocket`, d.nbdSocket]),
  ];
  for (const [field, path] of paths) {
    check(path === undefined || isAbsolute(path), field, `must be an absolute path, got ${path}`);
  }
  check(spec.append === undefined || spec.kernel !== undefined, 'append', 'needs a kernel');
  const ids = new Set<string>();
  for (const [index, disk] of spec.disks.entries()) {
    const field = `disks[${index}].node`;
    checkId(disk.node, field, ids);
    check(disk.node.length <= NODE_NAME_MAX_CHARS, field, `is over ${NODE_NAME_MAX_CHARS} chars`);
    check(disk.exportName.length > 0, `disks[${index}].exportName`, 'must not be empty');
    check(disk.bus === 'virtio', `disks[${index}].bus`, `must be virtio, got ${disk.bus}`);
  }
  for (const [index, nic] of spec.nics.entries()) {
    checkId(nic.id, `nics[${index}].id`, ids);
    check(
      TAP_PATTERN.test(nic.tap),
      `nics[${index}].tap`,
      `is not a Linux interface name: ${nic.tap}`,
    );
    check(MAC_PATTERN.test(nic.mac), `nics[${index}].mac`, `is not a MAC address: ${nic.mac}`);
    // Bit 0 of the first octet set means multicast: QEMU refuses it.
    check(
      (Number.parseInt(nic.mac.slice(0, 2), 16) & 1) === 0,
      `nics[${index}].mac`,
      'is multicast',
    );
  }
}

function checkId(id: string, field: string, taken: Set<string>): void {
  check(
    ID_PATTERN.test(id),
    field,
    `must start with a letter, then letters, digits, -._; got ${id}`,
  );
  check(!taken.has(id), field, `${id} is used twice`);
  taken.add(id);
}

function check(condition: boolean, field: string, what: string): void {
  if (!condition) {
    throw new QemuError(
      QemuErrorCode.BadSpec,
      `QEMU spec field ${field} ${what}; fix the VM config`,
    );
  }
}
