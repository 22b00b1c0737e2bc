import type { Logger } from '../util/logger.js';
import type { Database } from './database.js';
import { ensureSchema } from './database.js';
import type { JobManager } from './job-manager.js';
import { isTerminal } from './job-states.js';

/**
 * The inventory in ferry.db (schema `inventory`): this host and its peers, the datastores, the
 * disks and the VMs, as the agent reports them. A copy, never the authority: the descriptors in
 * the datastores decide where a disk lives, so each refresh replaces the tables whole from the
 * agent, and a lost ferry.db is rebuilt at the next start (DESIGN.md, "Control plane").
 */
const SCHEMA = [
  {
    version: 1,
    sql: `
      CREATE TABLE inventory_hosts (
        name TEXT PRIMARY KEY,
        url TEXT,
        is_self INTEGER NOT NULL
      );
      CREATE TABLE inventory_datastores (
        name TEXT PRIMARY KEY,
        path TEXT NOT NULL,
        capacity_bytes INTEGER,
        free_bytes INTEGER,
        disk_count INTEGER NOT NULL
      );
      CREATE TABLE inventory_disks (
        name TEXT PRIMARY KEY,
        datastore TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        generation INTEGER NOT NULL
      );
      CREATE TABLE inventory_vms (
        name TEXT PRIMARY KEY,
        datastore TEXT NOT NULL,
        disks TEXT NOT NULL,
        size_bytes INTEGER NOT NULL
      );
    `,
  },
] as const;

/** What the inventory reads of the agent (src/host/agent.ts). */
export interface InventoryAgent {
  listDatastores(): Promise<
    readonly {
      readonly name: string;
      readonly path: string;
      readonly capacityBytes: number | null;
      readonly freeBytes: number | null;
      readonly diskCount: number;
    }[]
  >;
  listDisks(): Promise<
    readonly {
      readonly name: string;
      readonly datastore: string;
      readonly sizeBytes: number;
      readonly generation: number;
    }[]
  >;
  listVms(): Promise<
    readonly {
      readonly name: string;
      readonly datastore: string;
      readonly disks: readonly string[];
      readonly sizeBytes: number;
    }[]
  >;
}

export interface InventoryOptions {
  readonly hostName: string;
  /** The other hosts this one knows (peers.ts). */
  readonly peers: () => readonly { readonly name: string; readonly url: string }[];
}

export class Inventory {
  constructor(
    private readonly db: Database,
    private readonly agent: InventoryAgent,
    private readonly options: InventoryOptions,
  ) {
    ensureSchema(db, 'inventory', SCHEMA);
  }

  /**
   * Refreshes after every job that ends (a move changes where disks are) and every `intervalMs`
   * (disks and datastores added or removed through the API), until the returned function is
   * called. A failed refresh is logged; the next one tries again.
   */
  follow(jobs: JobManager, intervalMs: number, log: Logger): () => void {
    const refresh = (): void => {
      this.refresh().catch((error: unknown) =>
        log.warn({ err: error }, 'could not refresh the inventory in ferry.db'),
      );
    };
    const stop = jobs.subscribe((event) => {
      if (event.type === 'state' && isTerminal(event.job.state)) refresh();
    });
    const timer = setInterval(refresh, intervalMs);
    timer.unref();
    return () => {
      stop();
      clearInterval(timer);
    };
  }

  /** Replaces every table with what the agent reports now, in one transaction. */
  async refresh(): Promise<void> {
    const [datastores, disks, vms] = await Promise.all([
      this.agent.listDatastores(),
      this.agent.listDisks(),
      this.agent.listVms(),
    ]);
    const db = this.db;
    db.transaction(() => {
      for (const table of ['hosts', 'datastores', 'disks', 'vms']) {
        db.exec(`DELETE FROM inventory_${table}`);
      }
      const host = db.prepare('INSERT INTO inventory_hosts (name, url, is_self) VALUES (?, ?, ?)');
      host.run(this.options.hostName, null, 1);
      for (const peer of this.options.peers()) host.run(peer.name, peer.url, 0);
      const datastore = db.prepare(
        'INSERT INTO inventory_datastores (name, path, capacity_bytes, free_bytes, disk_count) ' +
          'VALUES (?, ?, ?, ?, ?)',
      );
      for (const each of datastores) {
        datastore.run(each.name, each.path, each.capacityBytes, each.freeBytes, each.diskCount);
      }
      const disk = db.prepare(
        'INSERT INTO inventory_disks (name, datastore, size_bytes, generation) VALUES (?, ?, ?, ?)',
      );
      for (const each of disks)
        disk.run(each.name, each.datastore, each.sizeBytes, each.generation);
      const vm = db.prepare(
        'INSERT INTO inventory_vms (name, datastore, disks, size_bytes) VALUES (?, ?, ?, ?)',
      );
      for (const each of vms) {
        vm.run(each.name, each.datastore, JSON.stringify(each.disks), each.sizeBytes);
      }
    })();
  }
}
