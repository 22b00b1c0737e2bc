import { copyFile, mkdir, open, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { readJson, syncDirectory, writeJsonAtomic } from './atomic-file.js';
import type { Datastore, DatastoreProblem } from './datastore.js';
import { HostError, HostErrorCode } from './errors.js';
import { parseVmConfig, type VmConfig } from './vm-config.js';

/**
 * A VM's home directory: `<datastore>/<vm>/`, holding `vm.json` (which makes the directory a VM:
 * its name and its disks) and whatever small files go with the VM (config, logs). The disks
 * themselves stay flat in their datastores (datastore.ts); a VM only names them.
 *
 * A move copies the home, every file fsynced, to `.<vm>.home-move/` in the destination (a name
 * no scan takes for a VM: it starts with '.'), and renames it into place at the commit
 * (disk-mover.ts). Only directories holding a `vm.json` are VMs; others are left alone.
 */
export const VM_CONFIG_FILE = 'vm.json';

export interface HomeScan {
  readonly configs: readonly VmConfig[];
  readonly problems: readonly DatastoreProblem[];
}

export function homePath(datastore: Datastore, vm: string): string {
  return join(datastore.path, vm);
}

/** Where a move copies a VM's home before its commit renames it to `homePath`. */
export function homeMovePath(datastore: Datastore, vm: string): string {
  return join(datastore.path, `.${vm}.home-move`);
}

/** Creates `<datastore>/<vm>/vm.json`; `ERR_EXISTS` if the directory is already there. */
export async function createHome(datastore: Datastore, config: VmConfig): Promise<void> {
  const dir = homePath(datastore, config.name);
  try {
    await mkdir(dir);
  } catch (error) {
    if (errorCodeOf(error) !== 'EEXIST') throw error;
    throw new HostError(
      HostErrorCode.Exists,
      `${dir} already exists in datastore ${datastore.name}; a VM home needs a fresh directory`,
    );
  }
  try {
    await writeJsonAtomic(join(dir, VM_CONFIG_FILE), config);
    await syncDirectory(datastore.path);
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

/** Reads every VM home of `datastore`; a bad `vm.json` is a problem, never a rejection. */
export async function scanHomes(datastore: Datastore): Promise<HomeScan> {
  const configs: VmConfig[] = [];
  const problems: DatastoreProblem[] = [];
  const entries = await readdir(datastore.path, { withFileTypes: true });
  for (const entry of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    if (!entry.isDirectory() || entry.name.startsWith('.')) continue;
    const file = join(datastore.path, entry.name, VM_CONFIG_FILE);
    try {
      configs.push(parseVmConfig(await readJson(file), file, entry.name));
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') continue;
      problems.push({
        file,
        code: errorCodeOf(error) ?? HostErrorCode.BadDescriptor,
        message: `a VM is skipped: ${errorMessageOf(error)}`,
      });
    }
  }
  return { configs, problems };
}

/**
 * Copies directory `from` (every file, recursively) to `to`, replacing whatever a crashed earlier
 * attempt left there, and makes the copy durable: each file and each directory fsynced.
 */
export async function copyHome(from: string, to: string): Promise<void> {
  await rm(to, { recursive: true, force: true });
  await copyTree(from, to);
  await syncDirectory(join(to, '..'));
}

async function copyTree(from: string, to: string): Promise<void> {
  await mkdir(to);
  for (const entry of await readdir(from, { withFileTypes: true })) {
    const source = join(from, entry.name);
    const target = join(to, entry.name);
    if (entry.isDirectory()) {
      await copyTree(source, target);
    } else if (entry.isFile()) {
      await copyFile(source, target);
      const handle = await open(target, 'r+');
      try {
        await handle.sync();
      } finally {
        await handle.close();
      }
    }
    // Sockets, fifos and links are not a VM's files; they are not carried.
  }
  await syncDirectory(to);
}

/** Renames `from` to `to` (same datastore) and makes it durable. */
export async function placeHome(from: string, to: string): Promise<void> {
  await rename(from, to);
  await syncDirectory(join(to, '..'));
}

/** Deletes a home directory (or a move's copy of one) if it exists, durably. */
export async function removeHome(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
  await syncDirectory(join(dir, '..'));
}

export async function pathIsDirectory(path: string): Promise<boolean> {
  try {
    await readdir(path);
    return true;
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT' || errorCodeOf(error) === 'ENOTDIR') return false;
    throw error;
  }
}
