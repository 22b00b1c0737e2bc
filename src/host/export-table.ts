import {
  type ExportAccess,
  type ExportProvider,
  type NbdExport,
  PLAIN_ACCESS,
} from '../nbd/exports.js';
import { assert } from '../util/assert.js';
import { formatSize } from '../util/size.js';
import type { Datastore } from './datastore.js';
import type { DiskDescriptor } from './descriptor.js';
import type { DiskStack } from './disk-stack.js';
import type { PassThrough } from './pass-through.js';

/**
 * The disks this agent serves, by name: what the NBD server asks for on `NBD_OPT_GO` and lists on
 * `NBD_OPT_LIST`. Export name = disk name (DESIGN.md, "Vocabulary"). A disk is in the table
 * exactly while its stack is open; the agent removes it before closing the stack, so a new
 * connection never finds a closed device.
 *
 * Three kinds of export share the name space:
 *   - local disks (`DiskEntry`): the disk lives in one of this host's datastores;
 *   - pass-throughs (`PassThrough`): the disk moved to another host and this export forwards to
 *     it, so a guest still attached here keeps running (issue 7);
 *   - receiving exports: the image a peer agent is copying a disk into. Each is shown only to a
 *     connection that proved, over TLS, the pre-shared key identity of that peer; to anyone else
 *     it does not exist.
 *   - incoming disks (issue 8): a disk of a VM arriving from another host, under the disk's own
 *     name, for the destination QEMU only (it waits for the VM's memory): shown only on the
 *     agent's local socket, and its I/O held until the move commits (vm-receiver.ts).
 */
export interface DiskEntry {
  readonly descriptor: DiskDescriptor;
  readonly datastore: Datastore;
  readonly stack: DiskStack;
  readonly export: NbdExport;
}

interface ReceivingExport {
  readonly export: NbdExport;
  /** The PSK identity of the one peer that may see it. */
  readonly pskIdentity: string;
}

export class ExportTable implements ExportProvider {
  private readonly entries = new Map<string, DiskEntry>();
  private readonly passThroughs = new Map<string, PassThrough>();
  private readonly receiving = new Map<string, ReceivingExport>();
  private readonly incoming = new Map<string, NbdExport>();

  lookup(name: string, access: ExportAccess = PLAIN_ACCESS): NbdExport | undefined {
    const found = this.entries.get(name)?.export ?? this.passThroughs.get(name)?.export;
    if (found !== undefined) return found;
    if (access.isLocal === true && this.incoming.has(name)) return this.incoming.get(name);
    const receiving = this.receiving.get(name);
    return receiving !== undefined && mayReceive(receiving, access) ? receiving.export : undefined;
  }

  list(access: ExportAccess = PLAIN_ACCESS): readonly NbdExport[] {
    return [
      ...[...this.entries.values()].map((entry) => entry.export),
      ...[...this.passThroughs.values()].map((entry) => entry.export),
      ...[...this.receiving.values()]
        .filter((entry) => mayReceive(entry, access))
        .map((entry) => entry.export),
      ...(access.isLocal === true ? [...this.incoming.values()] : []),
    ];
  }

  get(name: string): DiskEntry | undefined {
    return this.entries.get(name);
  }

  /** Every local disk, sorted by name. */
  all(): DiskEntry[] {
    return [...this.entries.values()].sort((a, b) =>
      a.descriptor.name.localeCompare(b.descriptor.name),
    );
  }

  /** Whether a local disk of that name is served (pass-throughs are not local disks). */
  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Publishes an open disk; the caller has checked that the name is free. */
  add(descriptor: DiskDescriptor, datastore: Datastore, stack: DiskStack): DiskEntry {
    assert(!this.isTaken(descriptor.name), `export ${descriptor.name} is already in the table`);
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

  passThrough(name: string): PassThrough | undefined {
    return this.passThroughs.get(name);
  }

  allPassThroughs(): PassThrough[] {
    return [...this.passThroughs.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  addPassThrough(entry: PassThrough): void {
    assert(!this.isTaken(entry.name), `export ${entry.name} is already in the table`);
    this.passThroughs.set(entry.name, entry);
  }

  deletePassThrough(name: string): PassThrough | undefined {
    const entry = this.passThroughs.get(name);
    this.passThroughs.delete(name);
    return entry;
  }

  addReceiving(nbdExport: NbdExport, pskIdentity: string): void {
    assert(!this.isTaken(nbdExport.name), `export ${nbdExport.name} is already in the table`);
    this.receiving.set(nbdExport.name, { export: nbdExport, pskIdentity });
  }

  deleteReceiving(name: string): void {
    this.receiving.delete(name);
  }

  /** A disk arriving for a VM, served under its own name on the local socket only. */
  addIncoming(nbdExport: NbdExport): void {
    assert(!this.isTaken(nbdExport.name), `export ${nbdExport.name} is already in the table`);
    this.incoming.set(nbdExport.name, nbdExport);
  }

  deleteIncoming(name: string): void {
    this.incoming.delete(name);
  }

  /** Whether `name` is taken by an export of any kind. */
  isTaken(name: string): boolean {
    return (
      this.entries.has(name) ||
      this.passThroughs.has(name) ||
      this.receiving.has(name) ||
      this.incoming.has(name)
    );
  }
}

function mayReceive(entry: ReceivingExport, access: ExportAccess): boolean {
  return access.isTls && access.pskIdentity === entry.pskIdentity;
}

function describe(descriptor: DiskDescriptor, datastore: Datastore): string {
  return `${formatSize(descriptor.sizeBytes)} ${descriptor.provisioning} raw disk in datastore ${datastore.name}`;
}
