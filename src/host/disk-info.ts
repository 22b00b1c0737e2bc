import { type Provisioning, statAllocatedBytes } from '../block/raw-file.js';
import { errorCodeOf } from '../util/errors.js';
import type { Datastore } from './datastore.js';
import { HostErrorCode } from './errors.js';
import type { DiskEntry, ExportTable } from './export-table.js';
import type { PassThrough } from './pass-through.js';

/**
 * What the agent tells of a disk or a datastore (`ferry disk ls`, `ferry datastore ls`): read
 * from what it serves, so a listing never opens or changes anything.
 */
export interface DiskInfo {
  readonly name: string;
  readonly datastore: string;
  readonly sizeBytes: number;
  readonly provisioning: Provisioning;
  /** Bytes the image occupies on its file system now; null if it cannot be stat'ed. */
  readonly allocatedBytes: number | null;
  readonly generation: number;
  readonly image: string;
  readonly createdAt: string;
  /**
   * Null for a disk that lives here. For a disk that moved to another host, that host's name:
   * `datastore` is then its datastore there, and this host's export passes through to it.
   */
  readonly host: string | null;
}

export interface DatastoreInfo {
  readonly name: string;
  readonly path: string;
  readonly isAvailable: boolean;
  /** Null when the datastore is unavailable. */
  readonly capacityBytes: number | null;
  readonly freeBytes: number | null;
  /** Disks of this datastore the agent serves. */
  readonly diskCount: number;
}

export async function describeDisk(entry: DiskEntry): Promise<DiskInfo> {
  const { descriptor, datastore } = entry;
  const image = datastore.imagePath(descriptor);
  return {
    name: descriptor.name,
    datastore: datastore.name,
    sizeBytes: descriptor.sizeBytes,
    provisioning: descriptor.provisioning,
    // A listing must not fail because one image went missing behind the agent's back (its
    // open descriptor still serves it); the null says so.
    allocatedBytes: await statAllocatedBytes(image).catch(() => null),
    generation: descriptor.generation,
    image,
    createdAt: descriptor.createdAt,
    host: null,
  };
}

export async function describeDatastore(
  datastore: Datastore,
  exports: ExportTable,
): Promise<DatastoreInfo> {
  const diskCount = exports.all().filter((entry) => entry.datastore.name === datastore.name).length;
  try {
    const space = await datastore.space();
    return { name: datastore.name, path: datastore.path, isAvailable: true, ...space, diskCount };
  } catch (error) {
    if (errorCodeOf(error) !== HostErrorCode.DatastoreUnavailable) throw error;
    return {
      name: datastore.name,
      path: datastore.path,
      isAvailable: false,
      capacityBytes: null,
      freeBytes: null,
      diskCount,
    };
  }
}

/** A disk that moved to another host: what this host knows of it from its tombstone. */
export function describePassThrough(entry: PassThrough): DiskInfo {
  return {
    name: entry.name,
    datastore: entry.datastore,
    sizeBytes: entry.sizeBytes,
    provisioning: 'thin',
    allocatedBytes: null,
    generation: entry.generation,
    image: '',
    createdAt: '',
    host: entry.host,
  };
}
