import { randomUUID } from 'node:crypto';
import { lstat, readdir, realpath, rename, stat, statfs, unlink } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { createRawImage, type Provisioning } from '../block/raw-file.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { readJson, syncDirectory, writeJsonAtomic } from './atomic-file.js';
import {
  DESCRIPTOR_VERSION,
  type DiskDescriptor,
  readDescriptor,
  writeDescriptor,
} from './descriptor.js';
import { HostError, HostErrorCode } from './errors.js';
import { checkName } from './names.js';

/**
 * A datastore: a directory where disks live (a local file system, or an NFS or SAN file system
 * mounted there). Layout, flat so that `ls` shows what the agent sees:
 *
 *   <name>.disk.json   the descriptor of disk <name> (descriptor.ts); its presence makes the disk
 *   <name>.raw         the image the descriptor names (for created and imported disks)
 *   <name>.moved.json  a tombstone: disk <name> moved to another datastore at a higher generation
 *                      (written after the destination's descriptor, removed after this copy is)
 *   .<name>.redo-<k>.raw  a redo log of a snapshot-method move into this datastore (journaled)
 *   .<file>.tmp-*      a temporary of an atomic write; ignored, never cleaned here, because a
 *                      datastore on a shared file system may be another host's and its
 *                      temporaries may be in flight
 *   <vm>/              a VM's home directory: vm.json and the VM's small files (vm-home.ts)
 *   .<vm>.home-move/   a VM home being moved here, before its commit (journaled)
 *
 * The descriptor is the commit point. Create writes the image first and the descriptor last;
 * remove deletes the descriptor first and the image last. A crash in between leaves at most an
 * image no descriptor names: `scan` reports it and nothing deletes it, since after an interrupted
 * import it is the user's data. `ferry disk import NAME <datastore>/<NAME>.raw` adopts it in
 * place; deleting the file discards it.
 */
const DESCRIPTOR_SUFFIX = '.disk.json';
const IMAGE_SUFFIX = '.raw';
const TOMBSTONE_SUFFIX = '.moved.json';
const IDENTITY_FILE = '.ferry-datastore.json';
/** In the hidden name of a removed image still being unlinked (`removeDisk`). */
const REMAINS_MARK = '.removed-';

/** Where a moved disk went: the tombstone left at its old datastore (DESIGN.md, "Authority"). */
export interface Tombstone {
  readonly name: string;
  readonly datastore: string;
  readonly generation: number;
  /**
   * Set when the disk moved to another host (issue 7): that host's name; `datastore` is then a
   * datastore there. Such a tombstone stays after the old copy is deleted: it is how this host
   * remembers to pass the disk's export through to its new home.
   */
  readonly host?: string;
  /** With `host`: the disk's size, so its pass-through can be served before the peer answers. */
  readonly sizeBytes?: number;
}
/** Disk sizes are whole sectors: QEMU and the kernel address disks in 512-byte units. */
export const SECTOR_BYTES = 512;

export interface DatastoreSpace {
  readonly capacityBytes: number;
  /** Bytes an unprivileged writer can still allocate (statfs `bavail`). */
  readonly freeBytes: number;
}

/** The code of an image that no descriptor names (other problems carry their error's code). */
export const ORPHAN_IMAGE = 'ERR_ORPHAN_IMAGE';

/** Something in a datastore the agent cannot use and will not touch. */
export interface DatastoreProblem {
  readonly file: string;
  readonly code: string;
  readonly message: string;
}

export interface DatastoreScan {
  readonly descriptors: readonly DiskDescriptor[];
  readonly problems: readonly DatastoreProblem[];
}

export class Datastore {
  readonly name: string;
  /** Absolute path of the directory. */
  readonly path: string;

  /** Removed images still being unlinked (`removeDisk` with `isImageInBackground`). */
  private readonly deletions = new Set<Promise<void>>();

  constructor(name: string, path: string) {
    this.name = name;
    this.path = path;
  }

  descriptorPath(diskName: string): string {
    return join(this.path, `${diskName}${DESCRIPTOR_SUFFIX}`);
  }

  imagePath(descriptor: DiskDescriptor): string {
    return join(this.path, descriptor.image);
  }

  /**
   * The datastore's identity: a random id kept in the directory itself (`.ferry-datastore.json`),
   * created the first time it is asked. Two hosts that register the same shared directory (an NFS
   * mount) read the same id: that is how a cross-host move learns that the destination datastore
   * is reachable here too and copies over the storage path instead of the network (issue 7).
   */
  async identity(): Promise<string> {
    const path = join(this.path, IDENTITY_FILE);
    const existing = (await readJson(path).catch(() => null)) as { id?: unknown } | null;
    if (typeof existing?.id === 'string' && existing.id.length > 0) return existing.id;
    const id = randomUUID();
    await writeJsonAtomic(path, { id, createdAt: new Date().toISOString() });
    // Two hosts may race to create it: whichever rename landed last is the id both read.
    const written = (await readJson(path)) as { id: string };
    return written.id;
  }

  /** Throws `ERR_DATASTORE_UNAVAILABLE` unless the directory exists and can be listed. */
  async checkAvailable(): Promise<void> {
    try {
      await readdir(this.path);
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  /**
   * Reads every descriptor. Bad descriptors and orphan images come back as problems, never as a
   * rejection, so one broken file costs one disk, not the agent. Rejects only when the directory
   * itself cannot be read (`ERR_DATASTORE_UNAVAILABLE`).
   */
  async scan(): Promise<DatastoreScan> {
    let fileNames: string[];
    try {
      fileNames = (await readdir(this.path)).sort();
    } catch (error) {
      throw this.unavailable(error);
    }
    const descriptors: DiskDescriptor[] = [];
    const problems: DatastoreProblem[] = [];
    // Remains of removed images whose unlink a crash cut short (or still running): nobody's data.
    for (const fileName of fileNames) {
      if (fileName.includes(REMAINS_MARK)) this.deleteInBackground(join(this.path, fileName));
    }
    for (const fileName of fileNames) {
      if (!fileName.endsWith(DESCRIPTOR_SUFFIX) || fileName.startsWith('.')) continue;
      const file = join(this.path, fileName);
      const stem = fileName.slice(0, -DESCRIPTOR_SUFFIX.length);
      if (
        fileNames.includes(`${stem}${TOMBSTONE_SUFFIX}`) &&
        (await this.isBuried(stem, join(this.path, `${stem}${TOMBSTONE_SUFFIX}`)))
      ) {
        // Moved away; the move's cleanup did not finish (the agent's recovery finishes it).
        problems.push({
          file,
          code: 'ERR_MOVED',
          message: `disk ${stem} here was moved away (tombstone ${stem}${TOMBSTONE_SUFFIX}); this copy is stale`,
        });
        continue;
      }
      try {
        descriptors.push(await readDescriptor(file, stem));
      } catch (error) {
        problems.push({
          file,
          code: errorCodeOf(error) ?? 'ERR_BAD_DESCRIPTOR',
          message: errorMessageOf(error),
        });
      }
    }
    // An image is an orphan when no descriptor names it; the image beside an unreadable
    // descriptor is not (that descriptor is the problem to report).
    const images = new Set(descriptors.map((descriptor) => descriptor.image));
    const stems = new Set(
      fileNames
        .filter((fileName) => fileName.endsWith(DESCRIPTOR_SUFFIX))
        .map((fileName) => fileName.slice(0, -DESCRIPTOR_SUFFIX.length)),
    );
    for (const fileName of fileNames) {
      if (!fileName.endsWith(IMAGE_SUFFIX) || fileName.startsWith('.')) continue;
      if (images.has(fileName) || stems.has(fileName.slice(0, -IMAGE_SUFFIX.length))) continue;
      const file = join(this.path, fileName);
      problems.push({
        file,
        code: ORPHAN_IMAGE,
        message:
          `image ${file} has no descriptor (left by an interrupted create, import or remove); ` +
          `adopt it with "ferry disk import NAME ${file}" or delete it`,
      });
    }
    return { descriptors, problems };
  }

  /**
   * Creates the image, then the descriptor. On failure nothing is left behind (the image is
   * removed again); `ERR_EXISTS` if the disk's descriptor or image file is already there.
   */
  async createDisk(
    name: string,
    sizeBytes: number,
    provisioning: Provisioning,
  ): Promise<DiskDescriptor> {
    checkName(name, 'disk');
    checkDiskSize(sizeBytes);
    const descriptor = this.newDescriptor(name, sizeBytes, provisioning);
    const imagePath = this.imagePath(descriptor);
    await this.checkFree(name, imagePath);
    await createRawImage(imagePath, sizeBytes, provisioning);
    try {
      await writeDescriptor(this.descriptorPath(name), descriptor);
    } catch (error) {
      await unlink(imagePath).catch(() => undefined);
      throw error;
    }
    return descriptor;
  }

  /**
   * Adopts an existing raw image as disk `name` by renaming it into the datastore (or in place,
   * when `file` already is `<datastore>/<name>.raw`). A file on another file system is refused
   * with `ERR_CROSS_DEVICE` rather than copied: a copy of a large image is a job with progress,
   * not a request that blocks for minutes. Size comes from the file; provisioning is thin when
   * fewer bytes are allocated than the size. If the descriptor cannot be written the file is
   * moved back.
   */
  async importImage(name: string, file: string): Promise<DiskDescriptor> {
    checkName(name, 'disk');
    const source = await this.checkImportSource(file);
    const provisioning: Provisioning = source.blocks * 512 < source.size ? 'thin' : 'thick';
    const descriptor = this.newDescriptor(name, source.size, provisioning);
    const imagePath = this.imagePath(descriptor);
    const isInPlace = source.path === imagePath;
    if (isInPlace) {
      await this.checkFree(name, undefined);
    } else {
      await this.checkFree(name, imagePath);
      await this.checkSameDevice(source.path, source.dev, imagePath);
      await rename(source.path, imagePath);
      await syncDirectory(this.path);
      await syncDirectory(dirname(source.path));
    }
    try {
      await writeDescriptor(this.descriptorPath(name), descriptor);
    } catch (error) {
      if (!isInPlace) await rename(imagePath, source.path).catch(() => undefined);
      throw error;
    }
    return descriptor;
  }

  /**
   * Deletes the descriptor (the commit point), then the image; the device must be closed. Rejects
   * only if the descriptor could not be deleted (then nothing changed). An image that cannot be
   * deleted afterwards is returned as a problem: the disk is gone, its file is an orphan.
   */
  async removeDisk(
    descriptor: DiskDescriptor,
    options: { readonly isImageInBackground?: boolean } = {},
  ): Promise<DatastoreProblem | undefined> {
    await unlink(this.descriptorPath(descriptor.name));
    await syncDirectory(this.path);
    const image = this.imagePath(descriptor);
    try {
      if (options.isImageInBackground !== true) {
        await unlink(image);
        await syncDirectory(this.path);
        return undefined;
      }
      // Unlinking a large image frees every extent before it returns (about 0.25 s per GiB on
      // ext4 here): a move's end need not wait for it. Renamed to a hidden name, the file is no
      // disk's image any more, durably; the unlink finishes behind, and a crash before it leaves
      // a remains file that the next scan deletes.
      const remains = this.garbagePath(descriptor.image);
      await rename(image, remains);
      await syncDirectory(this.path);
      this.deleteInBackground(remains);
      return undefined;
    } catch (error) {
      return {
        file: image,
        code: errorCodeOf(error) ?? 'EIO',
        message: `disk ${descriptor.name} is removed but its image ${image} could not be deleted: ${errorMessageOf(error)}`,
      };
    }
  }

  /**
   * A path for a scratch file of this datastore's that nobody needs after a crash: hidden, and
   * marked as the remains of a removal, so the next scan deletes it if its maker could not.
   */
  garbagePath(label: string): string {
    return join(this.path, `.${label}${REMAINS_MARK}${randomUUID()}`);
  }

  /** Resolves once every image deleted in the background is gone (or failed to go). */
  async settle(): Promise<void> {
    await Promise.all(this.deletions);
  }

  private deleteInBackground(path: string): void {
    const deletion = unlink(path)
      .catch(() => undefined) // the next scan tries again
      .finally(() => this.deletions.delete(deletion));
    this.deletions.add(deletion);
  }

  /**
   * Creates the empty image a move of disk `name` copies into (`<name>.raw`, as a created disk's
   * image is named), without a descriptor: the move writes that at its commit. `ERR_EXISTS` if
   * the disk or the file is already here. Returns the descriptor to commit later (generation is
   * the caller's to set).
   */
  async createMoveTarget(
    source: DiskDescriptor,
    provisioning: Provisioning,
    options: { readonly isAllocationDeferred?: boolean } = {},
  ): Promise<DiskDescriptor> {
    const descriptor: DiskDescriptor = {
      ...source,
      provisioning,
      image: `${source.name}${IMAGE_SUFFIX}`,
    };
    const imagePath = this.imagePath(descriptor);
    await this.checkFree(source.name, imagePath);
    // Deferred: a thick image whose blocks the move will mostly share with its source (reflinks)
    // is allocated after the copy, where it still has holes (disk-mover.ts).
    const created = options.isAllocationDeferred === true ? 'thin' : provisioning;
    await createRawImage(imagePath, source.sizeBytes, created);
    return descriptor;
  }

  /** Writes `descriptor` here atomically and durably: the commit point of a move. */
  async commitDescriptor(descriptor: DiskDescriptor): Promise<void> {
    await writeDescriptor(this.descriptorPath(descriptor.name), descriptor);
  }

  /** Deletes disk `name`'s descriptor here if there is one: undoes a commit the move abandoned. */
  async removeDescriptor(name: string): Promise<void> {
    await this.removeFile(`${name}${DESCRIPTOR_SUFFIX}`);
  }

  /** Reads disk `name`'s descriptor here, or undefined if there is none (any other failure throws). */
  async readDescriptorOf(name: string): Promise<DiskDescriptor | undefined> {
    try {
      return await readDescriptor(this.descriptorPath(name), name);
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') return undefined;
      throw error;
    }
  }

  tombstonePath(name: string): string {
    return join(this.path, `${name}${TOMBSTONE_SUFFIX}`);
  }

  async writeTombstone(tombstone: Tombstone): Promise<void> {
    await writeJsonAtomic(this.tombstonePath(tombstone.name), tombstone);
  }

  /**
   * Whether the tombstone of disk `name` buries the descriptor here: it does unless it is older
   * than the descriptor (a disk that moved to another host and came back, whose old tombstone a
   * crash kept from being removed). An unreadable tombstone buries: serving a copy that may be
   * stale is worse than serving none.
   */
  private async isBuried(name: string, tombstoneFile: string): Promise<boolean> {
    const tombstone = (await readJson(tombstoneFile).catch(() => null)) as Tombstone | null;
    if (tombstone === null || typeof tombstone.generation !== 'number') return true;
    const descriptor = await this.readDescriptorOf(name).catch(() => undefined);
    return descriptor === undefined || tombstone.generation > descriptor.generation;
  }

  /**
   * The tombstones of disks that moved to another host and whose copy here is gone: each is a
   * pass-through to serve. Unreadable ones are skipped (the scan reports the disk if it matters).
   */
  async remoteTombstones(): Promise<Tombstone[]> {
    let fileNames: string[];
    try {
      fileNames = await readdir(this.path);
    } catch (error) {
      throw this.unavailable(error);
    }
    const found: Tombstone[] = [];
    for (const fileName of fileNames) {
      if (!fileName.endsWith(TOMBSTONE_SUFFIX) || fileName.startsWith('.')) continue;
      const stem = fileName.slice(0, -TOMBSTONE_SUFFIX.length);
      if (fileNames.includes(`${stem}${DESCRIPTOR_SUFFIX}`)) continue;
      const value = (await readJson(join(this.path, fileName)).catch(
        () => null,
      )) as Tombstone | null;
      if (
        value !== null &&
        typeof value.host === 'string' &&
        Number.isSafeInteger(value.sizeBytes) &&
        value.name === stem
      ) {
        found.push(value);
      }
    }
    return found.sort((a, b) => a.name.localeCompare(b.name));
  }

  async removeTombstone(name: string): Promise<void> {
    await this.removeFile(`${name}${TOMBSTONE_SUFFIX}`);
  }

  /** Deletes a file of this datastore if it exists, and syncs the directory. */
  async removeFile(fileName: string): Promise<void> {
    try {
      await unlink(join(this.path, fileName));
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') return;
      throw error;
    }
    await syncDirectory(this.path);
  }

  /** The file name of redo log `index` of a move of disk `name` into this datastore. */
  redoLogName(name: string, index: number): string {
    return `.${name}.redo-${index}${IMAGE_SUFFIX}`;
  }

  async space(): Promise<DatastoreSpace> {
    try {
      const fs = await statfs(this.path);
      return { capacityBytes: fs.blocks * fs.bsize, freeBytes: fs.bavail * fs.bsize };
    } catch (error) {
      throw this.unavailable(error);
    }
  }

  private newDescriptor(
    name: string,
    sizeBytes: number,
    provisioning: Provisioning,
  ): DiskDescriptor {
    return {
      version: DESCRIPTOR_VERSION,
      name,
      sizeBytes,
      format: 'raw',
      provisioning,
      generation: 1,
      image: `${name}${IMAGE_SUFFIX}`,
      createdAt: new Date().toISOString(),
    };
  }

  /** `ERR_EXISTS` if disk `name`'s descriptor, or `imagePath` when given, already exists. */
  private async checkFree(name: string, imagePath: string | undefined): Promise<void> {
    if (await pathExists(this.descriptorPath(name))) {
      throw new HostError(
        HostErrorCode.Exists,
        `disk ${name} already exists in datastore ${this.name}`,
      );
    }
    if (imagePath !== undefined && (await pathExists(imagePath))) {
      throw new HostError(
        HostErrorCode.Exists,
        `image file ${imagePath} already exists but no disk names it (left by an interrupted ` +
          `operation?): adopt it with "ferry disk import ${name} ${imagePath}" or delete it`,
      );
    }
  }

  private async checkImportSource(
    file: string,
  ): Promise<{ path: string; size: number; blocks: number; dev: number }> {
    if (!isAbsolute(file))
      throw new HostError(HostErrorCode.BadPath, `${file}: the path must be absolute`);
    let path: string;
    try {
      path = await realpath(file);
    } catch (error) {
      throw new HostError(HostErrorCode.BadPath, `${file}: ${errorMessageOf(error)}`, {
        cause: error,
      });
    }
    const info = await stat(path);
    if (!info.isFile()) throw new HostError(HostErrorCode.BadPath, `${file} is not a regular file`);
    if (info.size === 0)
      throw new HostError(HostErrorCode.BadSize, `${file} is empty: a disk needs a size`);
    return { path, size: info.size, blocks: info.blocks, dev: info.dev };
  }

  private async checkSameDevice(path: string, dev: number, imagePath: string): Promise<void> {
    const here = await stat(this.path);
    if (here.dev !== dev) {
      throw new HostError(
        HostErrorCode.CrossDevice,
        `${path} is on another file system than datastore ${this.name} (${this.path}), and ` +
          `import moves files, it does not copy them; copy it there first ` +
          `(cp --sparse=always ${path} ${imagePath}) and import the copy`,
      );
    }
  }

  private unavailable(error: unknown): HostError {
    return new HostError(
      HostErrorCode.DatastoreUnavailable,
      `datastore ${this.name} (${this.path}) is unavailable: ${errorMessageOf(error)}`,
      { cause: error },
    );
  }
}

/** Throws `ERR_BAD_SIZE` unless `sizeBytes` is a positive whole number of sectors. */
export function checkDiskSize(sizeBytes: number): void {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes % SECTOR_BYTES !== 0) {
    throw new HostError(
      HostErrorCode.BadSize,
      `a disk size must be a positive multiple of ${SECTOR_BYTES} bytes, got ${sizeBytes}`,
    );
  }
}

async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if (errorCodeOf(error) === 'ENOENT') return false;
    throw error;
  }
}
