import { Switch } from '../block/switch.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { Datastore } from './datastore.js';
import { ORPHAN_IMAGE } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import { type DiskStack, openDiskStack } from './disk-stack.js';
import type { DiskEntry, ExportTable } from './export-table.js';
import { type PassThrough, passThroughOf, type RemoteDevice, remoteDisk } from './pass-through.js';
import type { PeerLink } from './remote-mover.js';

/**
 * Puts disks into the export table the NBD server serves, and takes pass-throughs out of it:
 * the disks of a datastore as it opens (and its pass-throughs to disks that moved to another
 * host, and its VMs), a disk just created or imported, a disk a peer just moved here.
 *
 * It runs inside the agent's changes (`serialize`) and does no queueing of its own.
 */
export interface DiskPublisherHost {
  readonly exports: ExportTable;
  readonly log: Logger;
  /** This host's name: a disk in a shared datastore that names another host is not served. */
  readonly hostName: string;
  peerNamed(name: string): PeerLink | undefined;
  /** Closes the NBD connections to an export (`NbdServer.dropExport`). */
  dropExport(name: string): Promise<void>;
  /** Finds and registers the VMs of `datastore` (vm-service.ts). */
  openVms(datastore: Datastore): Promise<void>;
  warn(fields: object, message: string): void;
}

export class DiskPublisher {
  constructor(private readonly host: DiskPublisherHost) {}

  /** Opens every disk of `datastore`, skipping with a warning whatever cannot be served. */
  async openDatastore(datastore: Datastore): Promise<void> {
    let scan: Awaited<ReturnType<Datastore['scan']>>;
    try {
      scan = await datastore.scan();
    } catch (error) {
      this.host.warn({ datastore: datastore.name }, errorMessageOf(error));
      return;
    }
    for (const problem of scan.problems) {
      const isOrphan = problem.code === ORPHAN_IMAGE;
      const message = isOrphan ? problem.message : `a disk is skipped: ${problem.message}`;
      this.host.warn({ datastore: datastore.name, file: problem.file }, message);
    }
    for (const descriptor of scan.descriptors) {
      if (descriptor.host !== undefined && descriptor.host !== this.host.hostName) {
        // A shared datastore: that host serves this disk.
        this.host.log.info(
          { datastore: datastore.name, disk: descriptor.name, host: descriptor.host },
          `disk ${descriptor.name} in shared datastore ${datastore.name} is served by host ${descriptor.host}`,
        );
        continue;
      }
      const twin = this.host.exports.get(descriptor.name);
      if (twin) {
        this.host.warn(
          { datastore: datastore.name, disk: descriptor.name },
          `disk ${descriptor.name} in datastore ${datastore.name} is skipped: a disk of that name is already served from datastore ${twin.datastore.name}`,
        );
        continue;
      }
      await this.publish(descriptor, datastore).catch((error: unknown) => {
        this.host.warn(
          { datastore: datastore.name, disk: descriptor.name },
          `disk ${descriptor.name} is skipped: ${errorMessageOf(error)}`,
        );
      });
    }
    await this.openPassThroughs(datastore).catch((error: unknown) => {
      this.host.warn(
        { datastore: datastore.name },
        `pass-throughs are skipped: ${errorMessageOf(error)}`,
      );
    });
    await this.host.openVms(datastore).catch((error: unknown) => {
      this.host.warn({ datastore: datastore.name }, `VMs are skipped: ${errorMessageOf(error)}`);
    });
  }

  /** Serves a pass-through for every disk of `datastore` that moved to another host. */
  private async openPassThroughs(datastore: Datastore): Promise<void> {
    for (const tombstone of await datastore.remoteTombstones()) {
      if (this.host.exports.lookup(tombstone.name) !== undefined) {
        this.host.warn(
          { datastore: datastore.name, disk: tombstone.name },
          `disk ${tombstone.name} moved to host ${tombstone.host} is not passed through from datastore ${datastore.name}: the name is taken here`,
        );
        continue;
      }
      const device = new Switch(
        this.remoteDisk(tombstone.name, tombstone.host ?? '', tombstone.sizeBytes ?? 0),
      );
      this.host.exports.addPassThrough(passThroughOf(tombstone, datastore, device));
    }
  }

  /** A disk that lives on `host` (pass-through.ts, `remoteDisk`), reached through this host's peers. */
  private remoteDisk(name: string, host: string, sizeBytes: number): RemoteDevice {
    return remoteDisk({ name, host, sizeBytes, peerNamed: (peer) => this.host.peerNamed(peer) });
  }

  /** Opens the stack of a disk already in `datastore` and serves it. */
  async publish(descriptor: DiskDescriptor, datastore: Datastore): Promise<DiskEntry> {
    const stack = await openDiskStack(datastore.imagePath(descriptor), descriptor);
    return this.host.exports.add(descriptor, datastore, stack);
  }

  /** Publishes a disk just written; if it cannot be opened its files are removed again. */
  async publishNew(descriptor: DiskDescriptor, datastore: Datastore): Promise<DiskEntry> {
    try {
      return await this.publish(descriptor, datastore);
    } catch (error) {
      await datastore.removeDisk(descriptor).catch((cleanup: unknown) => {
        this.host.log.warn(
          { disk: descriptor.name, err: cleanup },
          'could not remove the disk that failed to open',
        );
      });
      throw error;
    }
  }

  /**
   * The receiver committed a disk here: serve it under its name. If this host passed that disk
   * through to another host (it had moved away and now comes back), new connections get the
   * disk at once, and the old pass-through's guests are moved over once its requests drain —
   * not inside the commit, where they may be held by the very host that is committing.
   */
  async publishReceived(
    descriptor: DiskDescriptor,
    datastore: Datastore,
    stack: DiskStack,
  ): Promise<void> {
    const old = this.host.exports.deletePassThrough(descriptor.name);
    this.host.exports.add(descriptor, datastore, stack);
    if (old === undefined) return;
    await old.tombstoneAt.removeTombstone(descriptor.name).catch((error: unknown) => {
      this.host.log.warn(
        { disk: descriptor.name, err: error },
        'could not remove the old tombstone',
      );
    });
    void (async () => {
      await old.device.pause();
      const remote = old.device.repoint(stack.top);
      old.device.resume();
      await remote.close();
    })().catch((error: unknown) => {
      this.host.log.warn(
        { disk: descriptor.name, err: error },
        'the old pass-through could not be re-pointed',
      );
    });
  }

  /**
   * Stops passing disk `name` through to the host it moved to: its connections here close and
   * its tombstone goes. The disk itself, on the other host, is untouched.
   */
  async forgetPassThrough(entry: PassThrough): Promise<void> {
    this.host.exports.deletePassThrough(entry.name);
    await this.host.dropExport(entry.name).catch(() => undefined);
    await entry.device.close().catch(() => undefined);
    await entry.tombstoneAt.removeTombstone(entry.name);
    this.host.log.info({ disk: entry.name, host: entry.host }, 'pass-through removed');
  }
}
