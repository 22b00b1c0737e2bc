import type { DatastoreInfo, DiskInfo } from '../host/disk-info.js';
import type { ClusterRecord, MaintenanceState } from './clusters.js';
import type { LatencyWindow } from './latency-window.js';

/**
 * How full and how slow a datastore is, as Storage DRS and placement count it.
 *
 * Space used: the datastore's file system (statfs: capacity − free), unless the cluster store has
 * a capacity for it (`ferry cluster capacity`): then capacity is that, and used is the provisioned
 * size of Ferry's disks on it, which is what a thin disk may grow to. Datastores that share a file
 * system (directories of one disk) need the latter, or they all look equally full.
 *
 * Latency: the mean of the guest requests to its disks over the window (latency-window.ts),
 * weighted by requests, so a busy disk counts for more than an idle one.
 */
export interface DatastoreUsage {
  readonly name: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  readonly latencyMs: number | null;
  readonly isAvailable: boolean;
  readonly maintenance: MaintenanceState;
  readonly cluster: string | null;
}

/** `GET /v1/clusters` entries (issue 10). */
export interface ClusterView extends ClusterRecord {
  readonly usedBytes: number;
  readonly capacityBytes: number;
  /** The mean of the members' guest latencies over the window, ms; null without guest I/O. */
  readonly latencyMs: number | null;
}

export interface UsageContext {
  readonly maintenance: MaintenanceState;
  readonly cluster: string | null;
  /** `ferry cluster capacity`, or null for the file system's. */
  readonly configuredCapacityBytes: number | null;
  readonly window: LatencyWindow;
}

export function usageOf(
  info: DatastoreInfo,
  disks: readonly DiskInfo[],
  context: UsageContext,
): DatastoreUsage {
  const mine = disks.filter((disk) => disk.datastore === info.name && disk.host === null);
  const configured = context.configuredCapacityBytes;
  const provisionedBytes = mine.reduce((sum, disk) => sum + disk.sizeBytes, 0);
  const capacityBytes = configured ?? info.capacityBytes ?? 0;
  const usedBytes =
    configured !== null ? provisionedBytes : (info.capacityBytes ?? 0) - (info.freeBytes ?? 0);
  let operations = 0;
  let latencySumUs = 0;
  for (const disk of mine) {
    const figures = context.window.figuresOf(disk.name);
    operations += figures.operations;
    latencySumUs += figures.latencySumUs;
  }
  return {
    name: info.name,
    capacityBytes,
    usedBytes,
    latencyMs: operations === 0 ? null : latencySumUs / operations / 1000,
    isAvailable: info.isAvailable,
    maintenance: context.maintenance,
    cluster: context.cluster,
  };
}

export function viewOf(record: ClusterRecord, usage: readonly DatastoreUsage[]): ClusterView {
  const members = usage.filter((one) => record.datastores.includes(one.name));
  let latencySumMs = 0;
  let counted = 0;
  for (const member of members) {
    if (member.latencyMs === null) continue;
    latencySumMs += member.latencyMs;
    counted += 1;
  }
  return {
    ...record,
    usedBytes: members.reduce((sum, one) => sum + one.usedBytes, 0),
    capacityBytes: members.reduce((sum, one) => sum + one.capacityBytes, 0),
    latencyMs: counted === 0 ? null : latencySumMs / counted,
  };
}
