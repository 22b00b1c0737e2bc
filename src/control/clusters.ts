import { FerryError } from '../util/errors.js';
import { type Database, ensureSchema } from './database.js';

/**
 * Datastore clusters and maintenance mode, kept in the control plane's store (database.ts).
 *
 * A cluster groups datastores that Storage DRS balances (drs.ts) and that initial placement picks
 * from. A datastore belongs to at most one cluster: the primary key of `cluster_members` says so,
 * so two clusters can never both claim it. Maintenance is a per-datastore state that outlives a
 * restart (`entering` → `on` once the datastore is empty; `off` is the absence of a row).
 */
export const ClusterErrorCode = {
  /** No cluster of that name. */
  NotFound: 'ERR_CLUSTER_NOT_FOUND',
  /** A cluster of that name exists, or a datastore is already in another cluster. */
  Exists: 'ERR_CLUSTER_EXISTS',
  /** A threshold, interval or member list that cannot be used. */
  BadSetting: 'ERR_CLUSTER_SETTING',
  /** The datastore is in maintenance: no new disks, no moves into it. */
  Maintenance: 'ERR_DATASTORE_MAINTENANCE',
} as const;
export type ClusterErrorCode = (typeof ClusterErrorCode)[keyof typeof ClusterErrorCode];

export class ClusterError extends FerryError<ClusterErrorCode> {
  override readonly name = 'ClusterError';
}

export type Automation = 'manual' | 'automatic';
export type MaintenanceState = 'off' | 'entering' | 'on';

export interface ClusterSettings {
  /** Fraction of capacity used above which DRS moves disks off a member (0..1). */
  readonly spaceThreshold: number;
  /** Mean guest latency over the window above which DRS moves load off a member, ms. */
  readonly latencyThresholdMs: number;
  readonly automation: Automation;
  /** How often automatic mode applies recommendations, s. */
  readonly intervalSeconds: number;
  /** A VM's disks stay on one datastore: DRS moves the VM, never one of its disks alone. */
  readonly keepVmDisksTogether: boolean;
}

export interface ClusterRecord extends ClusterSettings {
  readonly name: string;
  /** Members in the order they were named. */
  readonly datastores: readonly string[];
}

export const CLUSTER_DEFAULTS: ClusterSettings = {
  spaceThreshold: 0.8,
  latencyThresholdMs: 15,
  automation: 'manual',
  intervalSeconds: 300,
  keepVmDisksTogether: true,
};

/** An automatic cluster applies at most this often: each pass lists every disk. */
export const INTERVAL_SECONDS_MIN = 1;

const SCHEMA = [
  {
    version: 1,
    sql: `
      CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        space_threshold REAL NOT NULL,
        latency_threshold_ms REAL NOT NULL,
        automation TEXT NOT NULL CHECK (automation IN ('manual', 'automatic')),
        interval_seconds INTEGER NOT NULL,
        keep_vm_disks_together INTEGER NOT NULL
      );
      CREATE TABLE cluster_members (
        datastore TEXT PRIMARY KEY,
        cluster TEXT NOT NULL REFERENCES clusters(name) ON DELETE CASCADE,
        position INTEGER NOT NULL
      );
      CREATE TABLE datastore_maintenance (
        datastore TEXT PRIMARY KEY,
        state TEXT NOT NULL CHECK (state IN ('entering', 'on')),
        since TEXT NOT NULL
      );
      CREATE TABLE datastore_capacity (
        datastore TEXT PRIMARY KEY,
        capacity_bytes INTEGER NOT NULL
      );
    `,
  },
] as const;

interface ClusterRow {
  name: string;
  space_threshold: number;
  latency_threshold_ms: number;
  automation: Automation;
  interval_seconds: number;
  keep_vm_disks_together: number;
}

/** The clusters' tables. Synchronous: better-sqlite3 is, and each call is one short statement. */
export class ClusterStore {
  constructor(private readonly db: Database) {
    ensureSchema(db, 'clusters', SCHEMA);
  }

  list(): ClusterRecord[] {
    const rows = this.db.prepare('SELECT * FROM clusters ORDER BY name').all() as ClusterRow[];
    return rows.map((row) => this.recordOf(row));
  }

  get(name: string): ClusterRecord {
    const row = this.db.prepare('SELECT * FROM clusters WHERE name = ?').get(name) as
      | ClusterRow
      | undefined;
    if (row === undefined) {
      throw new ClusterError(
        ClusterErrorCode.NotFound,
        `no cluster named ${name}; see the clusters with \`ferry cluster list\``,
      );
    }
    return this.recordOf(row);
  }

  has(name: string): boolean {
    return this.db.prepare('SELECT 1 FROM clusters WHERE name = ?').get(name) !== undefined;
  }

  /** The cluster `datastore` belongs to, or null. */
  clusterOf(datastore: string): string | null {
    const row = this.db
      .prepare('SELECT cluster FROM cluster_members WHERE datastore = ?')
      .get(datastore) as { cluster: string } | undefined;
    return row?.cluster ?? null;
  }

  /** Creates a cluster; each member must be in no other cluster. */
  create(name: string, datastores: readonly string[], settings: Partial<ClusterSettings>): void {
    const full = checkSettings({ ...CLUSTER_DEFAULTS, ...settings });
    this.db.transaction(() => {
      if (this.has(name)) {
        throw new ClusterError(
          ClusterErrorCode.Exists,
          `a cluster named ${name} exists; pick another name or change it with \`ferry cluster set ${name}\``,
        );
      }
      this.db
        .prepare('INSERT INTO clusters VALUES (?, ?, ?, ?, ?, ?)')
        .run(
          name,
          full.spaceThreshold,
          full.latencyThresholdMs,
          full.automation,
          full.intervalSeconds,
          full.keepVmDisksTogether ? 1 : 0,
        );
      this.setMembers(name, datastores);
    })();
  }

  /** Changes settings and, when given, the member list (replacing it). */
  update(
    name: string,
    settings: Partial<ClusterSettings>,
    datastores?: readonly string[],
  ): ClusterRecord {
    this.db.transaction(() => {
      const current = this.get(name);
      const full = checkSettings({ ...current, ...settings });
      this.db
        .prepare(
          'UPDATE clusters SET space_threshold = ?, latency_threshold_ms = ?, automation = ?, ' +
            'interval_seconds = ?, keep_vm_disks_together = ? WHERE name = ?',
        )
        .run(
          full.spaceThreshold,
          full.latencyThresholdMs,
          full.automation,
          full.intervalSeconds,
          full.keepVmDisksTogether ? 1 : 0,
          name,
        );
      if (datastores !== undefined) {
        this.db.prepare('DELETE FROM cluster_members WHERE cluster = ?').run(name);
        this.setMembers(name, datastores);
      }
    })();
    return this.get(name);
  }

  /** Removes the cluster; its datastores and disks stay as they are. */
  remove(name: string): void {
    this.get(name);
    this.db.prepare('DELETE FROM clusters WHERE name = ?').run(name);
  }

  /** A datastore leaves its cluster (it was removed from the agent). */
  forgetDatastore(datastore: string): void {
    this.db.prepare('DELETE FROM cluster_members WHERE datastore = ?').run(datastore);
    this.db.prepare('DELETE FROM datastore_maintenance WHERE datastore = ?').run(datastore);
    this.db.prepare('DELETE FROM datastore_capacity WHERE datastore = ?').run(datastore);
  }

  maintenanceOf(datastore: string): MaintenanceState {
    const row = this.db
      .prepare('SELECT state FROM datastore_maintenance WHERE datastore = ?')
      .get(datastore) as { state: MaintenanceState } | undefined;
    return row?.state ?? 'off';
  }

  setMaintenance(datastore: string, state: MaintenanceState): void {
    if (state === 'off') {
      this.db.prepare('DELETE FROM datastore_maintenance WHERE datastore = ?').run(datastore);
      return;
    }
    this.db
      .prepare(
        'INSERT INTO datastore_maintenance VALUES (?, ?, ?) ' +
          'ON CONFLICT(datastore) DO UPDATE SET state = excluded.state',
      )
      .run(datastore, state, new Date().toISOString());
  }

  /** Datastores in maintenance (`entering` or `on`). */
  inMaintenance(): Map<string, MaintenanceState> {
    const rows = this.db.prepare('SELECT datastore, state FROM datastore_maintenance').all() as {
      datastore: string;
      state: MaintenanceState;
    }[];
    return new Map(rows.map((row) => [row.datastore, row.state]));
  }

  /**
   * The capacity DRS counts for `datastore`, or null for its file system's. Set it when several
   * datastores share one file system (their statfs numbers are then all the same and say
   * nothing about any one of them): used space is then what Ferry's disks on it provision.
   */
  capacityOf(datastore: string): number | null {
    const row = this.db
      .prepare('SELECT capacity_bytes FROM datastore_capacity WHERE datastore = ?')
      .get(datastore) as { capacity_bytes: number } | undefined;
    return row?.capacity_bytes ?? null;
  }

  setCapacity(datastore: string, capacityBytes: number | null): void {
    if (capacityBytes === null) {
      this.db.prepare('DELETE FROM datastore_capacity WHERE datastore = ?').run(datastore);
      return;
    }
    if (!Number.isSafeInteger(capacityBytes) || capacityBytes <= 0) {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        `capacity must be a positive size such as 10G, not ${capacityBytes}`,
      );
    }
    this.db
      .prepare(
        'INSERT INTO datastore_capacity VALUES (?, ?) ' +
          'ON CONFLICT(datastore) DO UPDATE SET capacity_bytes = excluded.capacity_bytes',
      )
      .run(datastore, capacityBytes);
  }

  private setMembers(name: string, datastores: readonly string[]): void {
    if (datastores.length === 0) {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        'a cluster needs at least one datastore; name them, e.g. `--datastores fast,slow`',
      );
    }
    if (new Set(datastores).size !== datastores.length) {
      throw new ClusterError(
        ClusterErrorCode.BadSetting,
        `a datastore is named twice in ${datastores.join(',')}; name each once`,
      );
    }
    const insert = this.db.prepare('INSERT INTO cluster_members VALUES (?, ?, ?)');
    datastores.forEach((datastore, position) => {
      const owner = this.clusterOf(datastore);
      if (owner !== null) {
        throw new ClusterError(
          ClusterErrorCode.Exists,
          `datastore ${datastore} is already in cluster ${owner}; a datastore belongs to one ` +
            `cluster: take it out first with \`ferry cluster set ${owner} --datastores ...\``,
        );
      }
      insert.run(datastore, name, position);
    });
  }

  private recordOf(row: ClusterRow): ClusterRecord {
    const members = this.db
      .prepare('SELECT datastore FROM cluster_members WHERE cluster = ? ORDER BY position')
      .all(row.name) as { datastore: string }[];
    return {
      name: row.name,
      datastores: members.map((member) => member.datastore),
      spaceThreshold: row.space_threshold,
      latencyThresholdMs: row.latency_threshold_ms,
      automation: row.automation,
      intervalSeconds: row.interval_seconds,
      keepVmDisksTogether: row.keep_vm_disks_together === 1,
    };
  }
}

function checkSettings(settings: ClusterSettings): ClusterSettings {
  const { spaceThreshold, latencyThresholdMs, automation, intervalSeconds } = settings;
  if (!(spaceThreshold > 0 && spaceThreshold <= 1)) {
    throw new ClusterError(
      ClusterErrorCode.BadSetting,
      `space threshold must be a fraction in (0, 1], e.g. 0.8 for 80%, not ${spaceThreshold}`,
    );
  }
  if (!(latencyThresholdMs > 0 && Number.isFinite(latencyThresholdMs))) {
    throw new ClusterError(
      ClusterErrorCode.BadSetting,
      `latency threshold must be a positive number of ms, e.g. 15, not ${latencyThresholdMs}`,
    );
  }
  if (automation !== 'manual' && automation !== 'automatic') {
    throw new ClusterError(
      ClusterErrorCode.BadSetting,
      `automation must be manual or automatic, not ${String(automation)}`,
    );
  }
  if (!Number.isSafeInteger(intervalSeconds) || intervalSeconds < INTERVAL_SECONDS_MIN) {
    throw new ClusterError(
      ClusterErrorCode.BadSetting,
      `interval must be a whole number of seconds, at least ${INTERVAL_SECONDS_MIN}, not ${intervalSeconds}`,
    );
  }
  return settings;
}
