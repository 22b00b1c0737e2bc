import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf } from '../util/errors.js';
import { readJson, writeJsonAtomic } from './atomic-file.js';
import { HostError, HostErrorCode } from './errors.js';
import { checkName, isValidName } from './names.js';

/**
 * The networks of this host (`ferry network add NAME --bridge BRIDGE`): names for the Linux
 * bridges a VM's NICs join, kept in `<dataDir>/networks.json`. A VM's config names networks,
 * not bridges, so the same config runs on a host whose bridges are called otherwise, and a move
 * to another host maps the names (`--network-map SRC=DST`, as Storage XenMotion remaps a VM's
 * networks). The bridge itself is the operator's: Ferry checks it exists and never creates it.
 */
export const NETWORKS_FILE = 'networks.json';
const NETWORKS_VERSION = 1;
/** Linux limits an interface name to 15 bytes. */
const IFNAME_PATTERN = /^[A-Za-z0-9_.-]{1,15}$/;

export interface Network {
  readonly name: string;
  readonly bridge: string;
}

export class NetworkRegistry {
  private constructor(
    private readonly filePath: string,
    private entries: readonly Network[],
  ) {}

  static async load(dataDir: string): Promise<NetworkRegistry> {
    const filePath = join(dataDir, NETWORKS_FILE);
    let value: unknown;
    try {
      value = await readJson(filePath);
    } catch (error) {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
      value = { version: NETWORKS_VERSION, networks: [] };
    }
    return new NetworkRegistry(filePath, parseNetworks(value, filePath));
  }

  list(): readonly Network[] {
    return [...this.entries].sort((a, b) => a.name.localeCompare(b.name));
  }

  get(name: string): Network | undefined {
    return this.entries.find((entry) => entry.name === name);
  }

  /** Names bridge `bridge` (which must exist) network `name`. */
  async add(name: string, bridge: string): Promise<Network> {
    checkName(name, 'network');
    if (!IFNAME_PATTERN.test(bridge)) {
      throw new HostError(
        HostErrorCode.BadName,
        `${JSON.stringify(bridge)} is not a Linux interface name (1 to 15 of A-Z a-z 0-9 . _ -)`,
      );
    }
    if (this.get(name) !== undefined) {
      throw new HostError(HostErrorCode.Exists, `network ${name} already exists`);
    }
    await checkBridge(bridge);
    const network = { name, bridge };
    await this.save([...this.entries, network]);
    return network;
  }

  /** `usedBy`: the VM whose NIC is on the network, if any; such a network is not removed. */
  async remove(name: string, usedBy: string | undefined): Promise<void> {
    if (this.get(name) === undefined) {
      throw new HostError(HostErrorCode.NotFound, `no network named ${name}`);
    }
    if (usedBy !== undefined) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `network ${name} is used by VM ${usedBy}; remove the VM first`,
      );
    }
    await this.save(this.entries.filter((entry) => entry.name !== name));
  }

  private async save(entries: readonly Network[]): Promise<void> {
    await writeJsonAtomic(this.filePath, { version: NETWORKS_VERSION, networks: entries });
    this.entries = entries;
  }
}

/** `ERR_NOT_FOUND` unless `bridge` is a bridge device of this host (its network namespace). */
export async function checkBridge(bridge: string): Promise<void> {
  try {
    await stat(`/sys/class/net/${bridge}/bridge`);
  } catch {
    throw new HostError(
      HostErrorCode.NotFound,
      `there is no bridge ${bridge} on this host; create it first (ip link add ${bridge} type bridge && ip link set ${bridge} up)`,
    );
  }
}

function parseNetworks(value: unknown, source: string): Network[] {
  const file = value as { version?: unknown; networks?: unknown } | null;
  const fail = (what: string): never => {
    throw new HostError(HostErrorCode.BadDescriptor, `network registry ${source}: ${what}`);
  };
  if (file === null || typeof file !== 'object') return fail('not a JSON object');
  if (file.version !== NETWORKS_VERSION) fail(`version is not ${NETWORKS_VERSION}`);
  if (!Array.isArray(file.networks)) return fail('no networks list');
  return file.networks.map((entry: unknown) => {
    const network = entry as Partial<Network> | null;
    if (
      network === null ||
      typeof network.name !== 'string' ||
      !isValidName(network.name) ||
      typeof network.bridge !== 'string' ||
      !IFNAME_PATTERN.test(network.bridge)
    ) {
      return fail(`bad entry ${JSON.stringify(entry)}`);
    }
    return { name: network.name, bridge: network.bridge };
  });
}
