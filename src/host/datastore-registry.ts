import { constants } from 'node:fs';
import { access, mkdir, realpath, stat } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { readJson, writeJsonAtomic } from './atomic-file.js';
import { Datastore, ORPHAN_IMAGE } from './datastore.js';
import { HostError, HostErrorCode } from './errors.js';
import { checkName, isValidName } from './names.js';

/**
 * Which datastores this agent has: `<dataDir>/datastores.json`, replaced atomically on every
 * change. When no datastore is registered (first start, or the last one was removed) the agent
 * registers `local` at `<dataDir>/datastores/local`, so `ferry disk create` works out of the box.
 *
 * Paths are stored resolved (absolute, symlinks followed), so the same directory cannot be
 * registered twice under two spellings. A registry file that cannot be read stops the agent:
 * unlike one bad disk descriptor, it would hide every disk.
 */
export const REGISTRY_FILE = 'datastores.json';
export const DEFAULT_DATASTORE = 'local';
const REGISTRY_VERSION = 1;

interface RegistryEntry {
  readonly name: string;
  readonly path: string;
}

export class DatastoreRegistry {
  private readonly filePath: string;
  private readonly dataDir: string;
  private entries: RegistryEntry[];

  private constructor(dataDir: string, entries: RegistryEntry[]) {
    this.dataDir = dataDir;
    this.filePath = join(dataDir, REGISTRY_FILE);
    this.entries = entries;
  }

  /** Loads the registry of `dataDir` (absolute), registering `local` if it has no datastore. */
  static async load(dataDir: string): Promise<DatastoreRegistry> {
    const filePath = join(dataDir, REGISTRY_FILE);
    let value: unknown;
    try {
      value = await readJson(filePath);
    } catch (error) {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
      value = { version: REGISTRY_VERSION, datastores: [] };
    }
    const registry = new DatastoreRegistry(dataDir, parseRegistry(value, filePath));
    if (registry.entries.length === 0) await registry.addDefault();
    return registry;
  }

  list(): readonly Datastore[] {
    return this.entries.map((entry) => new Datastore(entry.name, entry.path));
  }

  get(name: string): Datastore | undefined {
    const entry = this.entries.find((candidate) => candidate.name === name);
    return entry && new Datastore(entry.name, entry.path);
  }

  /**
   * Registers directory `path` (absolute, existing, writable) as datastore `name`. `ERR_EXISTS`
   * if the name or the directory is already registered; `ERR_BAD_PATH` if the path will not do.
   */
  async add(name: string, path: string): Promise<Datastore> {
    checkName(name, 'datastore');
    if (this.get(name))
      throw new HostError(HostErrorCode.Exists, `datastore ${name} already exists`);
    const resolved = await checkDatastoreDirectory(path);
    const twin = this.entries.find((entry) => entry.path === resolved);
    if (twin) {
      throw new HostError(HostErrorCode.Exists, `${path} is already datastore ${twin.name}`);
    }
    await this.save([...this.entries, { name, path: resolved }]);
    return new Datastore(name, resolved);
  }

  /**
   * Unregisters datastore `name`; its directory and files stay. The caller checks that no disk
   * of it is open; this checks that the directory holds no descriptor, good or bad (a datastore
   * that is unavailable cannot be checked, and can be removed: re-adding it brings its disks back).
   */
  async remove(name: string): Promise<void> {
    const datastore = this.get(name);
    if (!datastore) throw new HostError(HostErrorCode.NotFound, `no datastore named ${name}`);
    const scan = await datastore.scan().catch((error: unknown) => {
      if (errorCodeOf(error) === HostErrorCode.DatastoreUnavailable) return undefined;
      throw error;
    });
    const diskCount =
      (scan?.descriptors.length ?? 0) +
      (scan?.problems.filter((problem) => problem.code !== ORPHAN_IMAGE).length ?? 0);
    if (diskCount > 0) {
      throw new HostError(
        HostErrorCode.DatastoreNotEmpty,
        `datastore ${name} still holds ${diskCount} disk(s); remove or move them first`,
      );
    }
    await this.save(this.entries.filter((entry) => entry.name !== name));
  }

  private async addDefault(): Promise<void> {
    const path = join(this.dataDir, 'datastores', DEFAULT_DATASTORE);
    await mkdir(path, { recursive: true });
    await this.save([{ name: DEFAULT_DATASTORE, path: await realpath(path) }]);
  }

  private async save(entries: RegistryEntry[]): Promise<void> {
    await writeJsonAtomic(this.filePath, { version: REGISTRY_VERSION, datastores: entries });
    this.entries = entries;
  }
}

/** Resolves `path` and checks it is an existing, writable directory; `ERR_BAD_PATH` if not. */
async function checkDatastoreDirectory(path: string): Promise<string> {
  if (!isAbsolute(path))
    throw new HostError(HostErrorCode.BadPath, `${path}: the path must be absolute`);
  try {
    const resolved = await realpath(path);
    if (!(await stat(resolved)).isDirectory()) {
      throw new HostError(HostErrorCode.BadPath, `${path} is not a directory`);
    }
    await access(resolved, constants.W_OK | constants.X_OK);
    return resolved;
  } catch (error) {
    if (error instanceof HostError) throw error;
    throw new HostError(
      HostErrorCode.BadPath,
      `${path} cannot be a datastore: ${errorMessageOf(error)}`,
      {
        cause: error,
      },
    );
  }
}

function parseRegistry(value: unknown, source: string): RegistryEntry[] {
  const fail = (what: string): HostError =>
    new HostError(
      HostErrorCode.BadDescriptor,
      `datastore registry ${source}: ${what}; fix or remove the file`,
    );
  const record = value as { version?: unknown; datastores?: unknown } | null;
  if (typeof record !== 'object' || record === null) throw fail('not a JSON object');
  if (record.version !== REGISTRY_VERSION)
    throw fail(`version ${JSON.stringify(record.version)} is not 1`);
  if (!Array.isArray(record.datastores)) throw fail('"datastores" is not a list');
  const entries: RegistryEntry[] = [];
  for (const item of record.datastores as unknown[]) {
    const { name, path } = (item ?? {}) as { name?: unknown; path?: unknown };
    if (
      typeof name !== 'string' ||
      !isValidName(name) ||
      typeof path !== 'string' ||
      !isAbsolute(path)
    ) {
      throw fail(`bad entry ${JSON.stringify(item)}`);
    }
    if (entries.some((entry) => entry.name === name || entry.path === path)) {
      throw fail(`datastore ${name} (${path}) is listed twice`);
    }
    entries.push({ name, path });
  }
  return entries;
}
