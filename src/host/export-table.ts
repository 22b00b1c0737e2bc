import { type ExportAccess, type ExportProvider, type NbdExport, PLAIN_ACCESS } from '../nbd/exports.js';
import { assert } from '../util/assert.js';
import { formatSize } from '../util/size.js';
import type { Datastore } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import type { DiskStack } from './disk-stack.js';

/**
 * The disks this agent serves, by name: what the NBD server asks for on `NBD_OPT_GO` and lists on
 * `NBD_OPT_LIST`. Export name = disk name (DESIGN.md, "Vocabulary"). A disk is in the table
 * exactly while its stack is open; the agent removes it before closing the stack, so a new
 * connection never finds a closed device.
 */
export interface DiskEntry {
  readonly descriptor: DiskDescriptor;
  readonly datastore: Datastore;
  readonly stack: DiskStack;
  readonly export: NbdExport;
}

export class ExportTable implements ExportProvider {
  private readonly entries = new Map<string, DiskEntry>();

  lookup(name: string, _access: ExportAccess = PLAIN_ACCESS): NbdExport | undefined {
    return this.entries.get(name)?.export;
  }

  list(_access: ExportAccess = PLAIN_ACCESS): readonly NbdExport[] {
    return [...this.entries.values()].map((entry) => entry.export);
  }

  get(name: string): DiskEntry | undefined {
    return this.entries.get(name);
  }

  /** Every entry, sorted by disk name. */
  all(): DiskEntry[] {
    return [...this.entries.values()].sort((a, b) =>
      a.descriptor.name.localeCompare(b.descriptor.name),
    );
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Publishes an open disk; the caller has checked that the name is free. */
  add(descriptor: DiskDescriptor, datastore: Datastore, stack: DiskStack): DiskEntry {
    assert(!this.entries.has(descriptor.name), `export ${descriptor.name} is already in the table`);
    const entry: DiskEntry = {
      descriptor,
      datastore,
      stack,
      export: {
        name: descriptor.name,
        description: describe(descriptor, datastore),
        device: stack.top,
      },
    };
    this.entries.set(descriptor.name, entry);
    return entry;
  }

  /** Unpublishes a disk: new connections no longer find it. Its stack stays open. */
  delete(name: string): DiskEntry | undefined {
    const entry = this.entries.get(name);
    this.entries.delete(name);
    return entry;
  }
}

function describe(descriptor: DiskDescriptor, datastore: Datastore): string {
  return `${formatSize(descriptor.sizeBytes)} ${descriptor.provisioning} raw disk in datastore ${datastore.name}`;
}
