import { assert } from '../util/assert.js';
import type { Datastore } from './datastore.js';
import type { VmConfig } from './vm-config.js';

/**
 * The VMs this agent knows, by name: each is its home directory's `vm.json` and the datastore
 * that home is in. A disk belongs to at most one VM; `ownerOf` answers which.
 */
export interface VmEntry {
  readonly config: VmConfig;
  readonly datastore: Datastore;
}

export class VmTable {
  private readonly entries = new Map<string, VmEntry>();

  get(name: string): VmEntry | undefined {
    return this.entries.get(name);
  }

  /** Every VM, sorted by name. */
  all(): VmEntry[] {
    return [...this.entries.values()].sort((a, b) => a.config.name.localeCompare(b.config.name));
  }

  /** The VM disk `disk` belongs to, if any. */
  ownerOf(disk: string): VmEntry | undefined {
    return [...this.entries.values()].find((entry) => entry.config.disks.includes(disk));
  }

  /** The caller has checked the name is free and no disk is another VM's. */
  set(entry: VmEntry): void {
    this.entries.set(entry.config.name, entry);
  }

  add(entry: VmEntry): void {
    assert(!this.entries.has(entry.config.name), `VM ${entry.config.name} is already known`);
    this.entries.set(entry.config.name, entry);
  }

  delete(name: string): VmEntry | undefined {
    const entry = this.entries.get(name);
    this.entries.delete(name);
    return entry;
  }
}
