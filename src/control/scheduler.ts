/**
 * The scheduler's rule (DESIGN.md, "Control plane"): at most `hostMax` storage migrations run on
 * this host and at most `datastoreMax` on any one datastore (vSphere's published defaults: 2 per
 * host, 8 per datastore). A move counts on both its source and its destination datastore; a move
 * to or from another host counts on this host too, and the peer counts it on its side: it admits
 * a receive only within its own limits (`admissionOf`), and a move the peer turned away waits
 * here, held by the peer's answer (`Demand.heldBy`), until it is asked again.
 *
 * Queued jobs start in FIFO order as far as the limits allow; a job held by a datastore limit does
 * not hold a later job that fits (it keeps its place ahead of it, and says what it waits for).
 * Pure: the job manager gives it what runs and what waits, and starts what it answers.
 */

export interface Limits {
  /** Storage migrations running on this host at once. */
  readonly host: number;
  /** Storage migrations touching one datastore at once. */
  readonly datastore: number;
}

export const LIMITS_DEFAULT: Limits = { host: 2, datastore: 8 };

/** What one migration holds: this host's slot, and a slot on each of these local datastores. */
export interface Demand {
  readonly id: string;
  /** Local datastores it touches (source, destination), without duplicates. */
  readonly datastores: readonly string[];
  /** Held by something beyond this host's limits (a busy peer): waits with this sentence. */
  readonly heldBy?: string;
}

/** Migrations running now, by what they hold. */
export interface Usage {
  readonly host: number;
  readonly datastores: ReadonlyMap<string, number>;
}

export interface Plan {
  /** Ids to start now, in order. */
  readonly start: readonly string[];
  /** Each job left waiting: its place (1 = next) and the sentence of the limit holding it. */
  readonly waiting: ReadonlyMap<string, { position: number; waitingFor: string }>;
}

/** Counts what `running` holds. */
export function usageOf(running: readonly Demand[]): Usage {
  const datastores = new Map<string, number>();
  for (const demand of running) {
    for (const name of demand.datastores) datastores.set(name, (datastores.get(name) ?? 0) + 1);
  }
  return { host: running.length, datastores };
}

/** Decides which of `queued` (oldest first) start now, given `usage` and `limits`. */
export function plan(queued: readonly Demand[], usage: Usage, limits: Limits): Plan {
  let host = usage.host;
  const datastores = new Map(usage.datastores);
  const start: string[] = [];
  const waiting = new Map<string, { position: number; waitingFor: string }>();
  for (const demand of queued) {
    const held = demand.heldBy ?? holdOf(demand, host, datastores, limits);
    if (held === null) {
      start.push(demand.id);
      host += 1;
      for (const name of demand.datastores) datastores.set(name, (datastores.get(name) ?? 0) + 1);
      continue;
    }
    waiting.set(demand.id, { position: waiting.size + 1, waitingFor: held });
  }
  return { start, waiting };
}

/**
 * Whether a move another host asks to make here (a receive) fits now: null, or the limit that
 * turns it away, as a sentence. It takes a slot as a job here would, but does not queue: the
 * source keeps it in its own queue and asks again.
 */
export function admissionOf(demand: Demand, usage: Usage, limits: Limits): string | null {
  return holdOf(demand, usage.host, usage.datastores, limits);
}

/** Null when `demand` fits; else the limit that holds it, as a sentence. */
function holdOf(
  demand: Demand,
  host: number,
  datastores: ReadonlyMap<string, number>,
  limits: Limits,
): string | null {
  if (host >= limits.host) {
    return `host limit: ${host} of ${limits.host} migrations running on this host`;
  }
  for (const name of demand.datastores) {
    const count = datastores.get(name) ?? 0;
    if (count >= limits.datastore) {
      return `datastore ${name}: ${count} of ${limits.datastore} migrations`;
    }
  }
  return null;
}
