import { createHash } from 'node:crypto';
import { HostError, HostErrorCode } from './errors.js';
import { isValidName } from './names.js';

/**
 * A VM's configuration, as its home directory's `vm.json` keeps it (vm-home.ts): what QEMU is
 * started with (vm-runtime.ts) and what a move carries to another host. Nothing about a VM lives
 * only in the agent: the home holds this file, the kernel and initrd it boots, its serial
 * console log, and while it runs QEMU's pid file and QMP socket.
 *
 * Version 1 (issue 4: a home naming disks, nothing ran) is still read: it gets the defaults.
 */
export const VM_CONFIG_VERSION = 2;

/** The accelerator QEMU runs the guest with; `auto` is KVM where /dev/kvm opens, TCG otherwise. */
export type VmAccel = 'auto' | 'kvm' | 'tcg';
export const VM_ACCELS: readonly VmAccel[] = ['auto', 'kvm', 'tcg'];

export interface VmNic {
  /** A network of this host (`ferry network add`): the bridge the NIC's tap joins. */
  readonly network: string;
  /** Stable across starts and moves, so the guest's network follows it. */
  readonly mac: string;
}

export interface VmConfig {
  readonly version: typeof VM_CONFIG_VERSION;
  readonly name: string;
  /** The VM's disks, by name, in bus order (/dev/vda first); a disk belongs to at most one VM. */
  readonly disks: readonly string[];
  readonly createdAt: string;
  readonly memoryBytes: number;
  readonly cpus: number;
  readonly accel: VmAccel;
  /** File names inside the home (copied there at create, so they move with the VM), or null. */
  readonly kernel: string | null;
  readonly initrd: string | null;
  /** The kernel command line; `console=ttyS0` is what makes `ferry vm log` useful. */
  readonly append: string | null;
  readonly nics: readonly VmNic[];
}

export const VM_MEMORY_DEFAULT_BYTES = 512 * 1024 * 1024;
const VM_MEMORY_MIN_BYTES = 16 * 1024 * 1024;
const VM_MEMORY_MAX_BYTES = 1024 * 1024 * 1024 * 1024;
const VM_CPUS_MAX = 64;
const VM_NICS_MAX = 8;
const MAC_PATTERN = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** The settings a caller may give; the rest are defaults. */
export interface VmSettings {
  readonly memoryBytes?: number;
  readonly cpus?: number;
  readonly accel?: VmAccel;
  readonly append?: string;
  readonly nics?: readonly { readonly network: string; readonly mac?: string }[];
}

/** Checks `settings` and fills in the defaults (MACs derived from the VM's name and NIC index). */
export function vmConfigOf(
  name: string,
  disks: readonly string[],
  settings: VmSettings,
  files: { readonly kernel: string | null; readonly initrd: string | null },
): VmConfig {
  const memoryBytes = settings.memoryBytes ?? VM_MEMORY_DEFAULT_BYTES;
  const cpus = settings.cpus ?? 1;
  const nics = (settings.nics ?? []).map((nic, index) => ({
    network: nic.network,
    mac: (nic.mac ?? stableMac(name, index)).toLowerCase(),
  }));
  const config: VmConfig = {
    version: VM_CONFIG_VERSION,
    name,
    disks: [...disks],
    createdAt: new Date().toISOString(),
    memoryBytes,
    cpus,
    accel: settings.accel ?? 'auto',
    kernel: files.kernel,
    initrd: files.initrd,
    append: settings.append ?? null,
    nics,
  };
  const problem = problemOf(config);
  if (problem !== undefined) throw new HostError(HostErrorCode.BadVmConfig, problem);
  return config;
}

/**
 * A locally administered unicast MAC (first octet 0x52, as QEMU's own 52:54:00 prefix) from a
 * hash of the VM's name and the NIC's index: the same VM gets the same MAC on every host.
 */
export function stableMac(vm: string, index: number): string {
  const digest = createHash('sha256').update(`${vm}/${index}`).digest();
  const octets = [0x52, 0x54, digest[0] ?? 0, digest[1] ?? 0, digest[2] ?? 0, digest[3] ?? 0];
  return octets.map((octet) => octet.toString(16).padStart(2, '0')).join(':');
}

/** Reads a `vm.json` value; throws `ERR_BAD_DESCRIPTOR` saying what is wrong. */
export function parseVmConfig(value: unknown, source: string, expectedName: string): VmConfig {
  const fail = (what: string): never => {
    throw new HostError(HostErrorCode.BadDescriptor, `VM config ${source}: ${what}`);
  };
  if (value === null || typeof value !== 'object') return fail('not a JSON object');
  const raw = value as Partial<Omit<VmConfig, 'version'>> & { version?: unknown };
  if (raw.version !== 1 && raw.version !== VM_CONFIG_VERSION) {
    fail(`version is not 1 or ${VM_CONFIG_VERSION}`);
  }
  if (raw.name !== expectedName) fail(`names VM ${JSON.stringify(raw.name)}`);
  const config: VmConfig =
    raw.version === 1
      ? {
          version: VM_CONFIG_VERSION,
          name: raw.name as string,
          disks: raw.disks as string[],
          createdAt: raw.createdAt as string,
          memoryBytes: VM_MEMORY_DEFAULT_BYTES,
          cpus: 1,
          accel: 'auto',
          kernel: null,
          initrd: null,
          append: null,
          nics: [],
        }
      : (raw as VmConfig);
  const problem = problemOf(config);
  if (problem !== undefined) fail(problem);
  return config;
}

/** What makes `config` unusable, or undefined. */
function problemOf(config: VmConfig): string | undefined {
  const { disks, memoryBytes, cpus, nics } = config;
  if (!Array.isArray(disks) || disks.length === 0 || !disks.every((d) => isValidName(d))) {
    return `bad disks ${JSON.stringify(disks)}`;
  }
  if (typeof config.createdAt !== 'string') return 'bad createdAt';
  if (
    !Number.isSafeInteger(memoryBytes) ||
    memoryBytes < VM_MEMORY_MIN_BYTES ||
    memoryBytes > VM_MEMORY_MAX_BYTES ||
    memoryBytes % (1024 * 1024) !== 0
  ) {
    return `memory ${memoryBytes} bytes: give a whole number of MiB from 16M to 1T (e.g. --memory 512M)`;
  }
  if (!Number.isSafeInteger(cpus) || cpus < 1 || cpus > VM_CPUS_MAX) {
    return `cpus ${cpus}: give 1 to ${VM_CPUS_MAX}`;
  }
  if (!VM_ACCELS.includes(config.accel)) {
    return `accel ${JSON.stringify(config.accel)}: use ${VM_ACCELS.join(', ')}`;
  }
  for (const file of [config.kernel, config.initrd]) {
    if (file !== null && (typeof file !== 'string' || !isValidName(file))) {
      return `boot file ${JSON.stringify(file)} is not a file name inside the home`;
    }
  }
  if (config.initrd !== null && config.kernel === null) return 'an initrd needs a kernel';
  if (config.append !== null && typeof config.append !== 'string') return 'bad append';
  if (!Array.isArray(nics) || nics.length > VM_NICS_MAX) {
    return `a VM has at most ${VM_NICS_MAX} NICs`;
  }
  const macs = new Set<string>();
  for (const nic of nics) {
    if (!isValidName(nic.network))
      return `NIC network ${JSON.stringify(nic.network)} is not a valid name`;
    if (!MAC_PATTERN.test(nic.mac)) {
      return `MAC ${JSON.stringify(nic.mac)}: write six hex octets, e.g. 52:54:00:12:34:56`;
    }
    // Bit 0 of the first octet marks a multicast address, which no NIC may have.
    if ((Number.parseInt(nic.mac.slice(0, 2), 16) & 1) !== 0) {
      return `MAC ${nic.mac} is a multicast address; a NIC needs a unicast one`;
    }
    if (macs.has(nic.mac)) return `MAC ${nic.mac} is given to two NICs`;
    macs.add(nic.mac);
  }
  return undefined;
}
