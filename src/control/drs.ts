import type { ClusterSettings, MaintenanceState } from './clusters.js';

/**
 * Storage DRS: a pure function from a snapshot of one cluster to the moves that fix it, in the
 * manner of vSphere SDRS. Nothing here reads a clock, a disk or the database, so the tests can
 * drive it with any snapshot (drs-snapshot.ts builds the real one).
 *
 * The rules, in the order they are applied to a simulated copy of the cluster's usage:
 * 1. Maintenance: every disk on a datastore in maintenance goes to another member, the one with
 *    the most free space that stays under the space threshold (or, when none does, the most free
 *    space that still fits: emptying the datastore is what the operator asked for).
 * 2. Space: while a member is above the space threshold, move a unit off it. A unit is a disk,
 *    or (keepVmDisksTogether) all the disks of a VM, moved as the VM. Prefer the smallest unit
 *    that brings the member under; failing that, the largest unit that fits anywhere. The
 *    destination is the one left least full after the move (the cluster stays balanced), and a
 *    move never takes a destination above the threshold.
 * 3. Latency: for a member whose guest latency over the window is above the latency threshold,
 *    move its busiest unit (most IOPS) to the member with the lowest latency that is under the
 *    latency threshold and stays under the space threshold.
 * Each unit moves at most once per pass, and a destination never receives more than it can hold
 * under the threshold, so the pass terminates and never makes a member worse than its threshold.
 *
 * Guarantee (tested as a property): with rule 2 alone, when the cluster's total slack under the
 * threshold is at least (members × largest unit), every member ends under the threshold.
 */
export interface DrsDatastore {
  readonly name: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  /** Mean guest latency over the window, ms; null with no guest I/O in the window. */
  readonly latencyMs: number | null;
  /** Unavailable datastores are neither sources nor destinations. */
  readonly isAvailable: boolean;
  readonly maintenance: MaintenanceState;
}

export interface DrsDisk {
  readonly name: string;
  readonly sizeBytes: number;
  readonly datastore: string;
  readonly vm: string | null;
  /** Guest requests per second over the window. */
  readonly iops: number;
}

export interface DrsCluster
  extends Pick<ClusterSettings, 'spaceThreshold' | 'latencyThresholdMs' | 'keepVmDisksTogether'> {
  readonly name: string;
  readonly datastores: readonly DrsDatastore[];
  /** Disks on the members (others are ignored). */
  readonly disks: readonly DrsDisk[];
}

export type DrsReason = 'space' | 'latency' | 'maintenance';

export interface UsageEffect {
  readonly usedFractionBefore: number;
  readonly usedFractionAfter: number;
}

export interface Recommendation {
  /** Stable for the same move, so `apply` can name the ones it was shown. */
  readonly id: string;
  readonly cluster: string;
  /** The disk moved; for a VM, its first disk (all of them are in `disks`). */
  readonly disk: string;
  /** Set when the VM moves as a whole (its home and every disk). */
  readonly vm: string | null;
  readonly disks: readonly string[];
  readonly from: string;
  readonly to: string;
  readonly reason: DrsReason;
  readonly message: string;
  readonly sizeBytes: number;
  readonly effect: { readonly from: UsageEffect; readonly to: UsageEffect };
}

export interface DrsResult {
  readonly recommendations: Recommendation[];
  /** What DRS could not fix, each a sentence saying what to do. */
  readonly problems: string[];
}

/** What moves together: one disk, or a VM's disks. */
interface Unit {
  readonly key: string;
  readonly vm: string | null;
  readonly disks: readonly DrsDisk[];
  readonly sizeBytes: number;
  readonly iops: number;
}

export function recommend(cluster: DrsCluster): DrsResult {
  const state = new Simulation(cluster);
  const problems: string[] = [];
  for (const store of cluster.datastores) {
    if (store.maintenance !== 'off') evacuate(state, store.name, problems);
  }
  balanceSpace(state, problems);
  relieveLatency(state);
  return { recommendations: state.recommendations, problems };
}

/** The simulated usage a pass changes as it picks moves. */
class Simulation {
  readonly recommendations: Recommendation[] = [];
  readonly used = new Map<string, number>();
  readonly stores = new Map<string, DrsDatastore>();
  readonly units: Unit[];
  /** Units already moved in this pass: each moves once. */
  readonly moved = new Set<string>();

  constructor(readonly cluster: DrsCluster) {
    for (const store of cluster.datastores) {
      this.stores.set(store.name, store);
      this.used.set(store.name, store.usedBytes);
    }
    this.units = unitsOf(cluster);
  }

  fraction(name: string): number {
    const store = this.stores.get(name);
    if (store === undefined || store.capacityBytes <= 0) return 1;
    return (this.used.get(name) ?? 0) / store.capacityBytes;
  }

  /** Where `unit`'s bytes are now, per datastore (a VM's disks may be spread). */
  bytesOn(unit: Unit, name: string): number {
    return unit.disks
      .filter((disk) => disk.datastore === name)
      .reduce((sum, disk) => sum + disk.sizeBytes, 0);
  }

  /** Bytes `to` gains if `unit` moves there. */
  gainOf(unit: Unit, to: string): number {
    return unit.sizeBytes - this.bytesOn(unit, to);
  }

  /** Members that may receive disks. */
  destinations(except: string): DrsDatastore[] {
    return this.cluster.datastores.filter(
      (store) => store.name !== except && store.isAvailable && store.maintenance === 'off',
    );
  }

  fitsUnder(unit: Unit, to: DrsDatastore): boolean {
    const after = (this.used.get(to.name) ?? 0) + this.gainOf(unit, to.name);
    return after <= this.cluster.spaceThreshold * to.capacityBytes;
  }

  fitsAtAll(unit: Unit, to: DrsDatastore): boolean {
    return (this.used.get(to.name) ?? 0) + this.gainOf(unit, to.name) <= to.capacityBytes;
  }

  fractionAfter(unit: Unit, to: string): number {
    const store = this.stores.get(to);
    if (store === undefined || store.capacityBytes <= 0) return 1;
    return ((this.used.get(to) ?? 0) + this.gainOf(unit, to)) / store.capacityBytes;
  }

  unitsOn(name: string): Unit[] {
    return this.units.filter(
      (unit) => !this.moved.has(unit.key) && unit.disks.some((disk) => disk.datastore === name),
    );
  }

  move(unit: Unit, from: string, to: string, reason: DrsReason, why: string): void {
    const fromBefore = this.fraction(from);
    const toBefore = this.fraction(to);
    for (const disk of unit.disks) {
      if (disk.datastore === to) continue;
      this.used.set(disk.datastore, (this.used.get(disk.datastore) ?? 0) - disk.sizeBytes);
      this.used.set(to, (this.used.get(to) ?? 0) + disk.sizeBytes);
    }
    this.moved.add(unit.key);
    const what = unit.vm === null ? `disk ${unit.disks[0]?.name}` : `VM ${unit.vm}`;
    const toAfter = this.fraction(to);
    this.recommendations.push({
      id: `${this.cluster.name}:${unit.key}:${from}:${to}`,
      cluster: this.cluster.name,
      disk: unit.disks[0]?.name ?? '',
      vm: unit.vm,
      disks: unit.disks.map((disk) => disk.name),
      from,
      to,
      reason,
      message: `move ${what} from ${from} to ${to}: ${why}; ${to} goes from ${percent(toBefore)} to ${percent(toAfter)} used`,
      sizeBytes: unit.sizeBytes,
      effect: {
        from: { usedFractionBefore: fromBefore, usedFractionAfter: this.fraction(from) },
        to: { usedFractionBefore: toBefore, usedFractionAfter: toAfter },
      },
    });
  }
}

function unitsOf(cluster: DrsCluster): Unit[] {
  const members = new Set(cluster.datastores.map((store) => store.name));
  const groups = new Map<string, { vm: string | null; disks: DrsDisk[] }>();
  for (const disk of cluster.disks) {
    if (!members.has(disk.datastore)) continue;
    const together = cluster.keepVmDisksTogether && disk.vm !== null;
    const key = together ? `vm/${disk.vm}` : `disk/${disk.name}`;
    const group = groups.get(key) ?? { vm: together ? disk.vm : null, disks: [] };
    group.disks.push(disk);
    groups.set(key, group);
  }
  return [...groups].map(([key, group]) => ({
    key,
    vm: group.vm,
    disks: group.disks,
    sizeBytes: group.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0),
    iops: group.disks.reduce((sum, disk) => sum + disk.iops, 0),
  }));
}

function evacuate(state: Simulation, from: string, problems: string[]): void {
  const units = [...state.unitsOn(from)].sort((a, b) => b.sizeBytes - a.sizeBytes);
  for (const unit of units) {
    const targets = state.destinations(from);
    const byRoom = (a: DrsDatastore, b: DrsDatastore): number =>
      state.fractionAfter(unit, a.name) - state.fractionAfter(unit, b.name);
    const under = targets.filter((to) => state.fitsUnder(unit, to)).sort(byRoom)[0];
    const fits = under ?? targets.filter((to) => state.fitsAtAll(unit, to)).sort(byRoom)[0];
    if (fits === undefined) {
      problems.push(
        `${describe(unit)} cannot leave ${from}: no other member of cluster ${state.cluster.name} ` +
          'has room for it; add a datastore to the cluster or free space, then enter maintenance again',
      );
      continue;
    }
    const note = under === undefined ? ` (${fits.name} goes above the space threshold)` : '';
    state.move(unit, from, fits.name, 'maintenance', `${from} is entering maintenance${note}`);
  }
}

function balanceSpace(state: Simulation, problems: string[]): void {
  const threshold = state.cluster.spaceThreshold;
  const stuck = new Set<string>();
  // Each iteration moves a unit (at most once each) or marks a member stuck: bounded.
  for (;;) {
    const over = state.cluster.datastores
      .filter(
        (store) =>
          store.isAvailable &&
          store.maintenance === 'off' &&
          !stuck.has(store.name) &&
          state.fraction(store.name) > threshold,
      )
      .sort((a, b) => state.fraction(b.name) - state.fraction(a.name))[0];
    if (over === undefined) return;
    const move = bestSpaceMove(state, over);
    if (move === undefined) {
      stuck.add(over.name);
      problems.push(
        `${over.name} is ${percent(state.fraction(over.name))} used, above the cluster's ` +
          `${percent(threshold)}, and no move fits under the threshold elsewhere; add a datastore ` +
          'to the cluster, raise its capacity, or remove disks',
      );
      continue;
    }
    state.move(
      move.unit,
      over.name,
      move.to,
      'space',
      `${over.name} is ${percent(state.fraction(over.name))} used, above ${percent(threshold)}`,
    );
  }
}

function bestSpaceMove(
  state: Simulation,
  over: DrsDatastore,
): { unit: Unit; to: string } | undefined {
  const limit = state.cluster.spaceThreshold * over.capacityBytes;
  const excess = (state.used.get(over.name) ?? 0) - limit;
  let best: { unit: Unit; to: string; enough: boolean; after: number } | undefined;
  for (const unit of state.unitsOn(over.name)) {
    const freed = state.bytesOn(unit, over.name);
    const enough = freed >= excess;
    for (const to of state.destinations(over.name)) {
      if (!state.fitsUnder(unit, to)) continue;
      const after = state.fractionAfter(unit, to.name);
      const candidate = { unit, to: to.name, enough, after };
      if (best === undefined || isBetterSpaceMove(candidate, best, state, over.name)) {
        best = candidate;
      }
    }
  }
  return best;
}

/** Enough to clear the excess beats not; then the smaller unit if enough, else the larger; then balance. */
function isBetterSpaceMove(
  a: { unit: Unit; enough: boolean; after: number },
  b: { unit: Unit; enough: boolean; after: number },
  state: Simulation,
  from: string,
): boolean {
  if (a.enough !== b.enough) return a.enough;
  const freedA = state.bytesOn(a.unit, from);
  const freedB = state.bytesOn(b.unit, from);
  if (freedA !== freedB) return a.enough ? freedA < freedB : freedA > freedB;
  return a.after < b.after;
}

function relieveLatency(state: Simulation): void {
  const { latencyThresholdMs } = state.cluster;
  const hot = state.cluster.datastores.filter(
    (store) =>
      store.isAvailable &&
      store.maintenance === 'off' &&
      store.latencyMs !== null &&
      store.latencyMs > latencyThresholdMs,
  );
  for (const store of hot) {
    const busiest = state
      .unitsOn(store.name)
      .filter((unit) => unit.iops > 0)
      .sort((a, b) => b.iops - a.iops)[0];
    if (busiest === undefined) continue;
    const to = state
      .destinations(store.name)
      .filter(
        (candidate) =>
          (candidate.latencyMs ?? 0) < latencyThresholdMs && state.fitsUnder(busiest, candidate),
      )
      .sort((a, b) => (a.latencyMs ?? 0) - (b.latencyMs ?? 0))[0];
    if (to === undefined) continue;
    state.move(
      busiest,
      store.name,
      to.name,
      'latency',
      `guest latency on ${store.name} is ${store.latencyMs?.toFixed(1)} ms, above ${latencyThresholdMs} ms; ` +
        `${describe(busiest)} is its busiest (${busiest.iops.toFixed(0)} IOPS)`,
    );
  }
}

export interface PlacementCandidate {
  readonly name: string;
  readonly capacityBytes: number;
  readonly usedBytes: number;
  readonly isAvailable: boolean;
  readonly maintenance: MaintenanceState;
}

/**
 * Initial placement: the member with the most free space that stays under the space threshold
 * with the new disk, and is available and not in maintenance; undefined when none qualifies.
 */
export function placeDisk(
  members: readonly PlacementCandidate[],
  sizeBytes: number,
  spaceThreshold: number,
): PlacementCandidate | undefined {
  return members
    .filter(
      (store) =>
        store.isAvailable &&
        store.maintenance === 'off' &&
        store.usedBytes + sizeBytes <= spaceThreshold * store.capacityBytes,
    )
    .sort((a, b) => b.capacityBytes - b.usedBytes - (a.capacityBytes - a.usedBytes))[0];
}

function describe(unit: Unit): string {
  return unit.vm === null ? `disk ${unit.disks[0]?.name}` : `VM ${unit.vm}`;
}

function percent(fraction: number): string {
  return `${(fraction * 100).toFixed(1)}%`;
}
