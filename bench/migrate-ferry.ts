import type { MethodName, MethodTuning } from '../src/migrate/method.js';
import type { HostWaits } from './host-waits.js';
import { medianOf } from './migrate-table.js';

/**
 * Ferry as the migration benchmark drives it, two ways behind one interface:
 *
 * - `api` (the product path, the default): `ferry serve`, datastores and disks through the REST
 *   API, `POST /v1/migrations`, and the job followed with `GET /v1/jobs/:id`
 *   (migrate-ferry-api.ts);
 * - `agent`: the same Agent and NBD server in a child process of ours, driven over Node's IPC
 *   (migrate-ferry-agent.ts, migrate-agent-host.ts), for what the API does not offer: method
 *   tuning (dbt's hot-block avoidance) and the dirty bytes left for the switchover.
 */
export type FerryDriverName = 'api' | 'agent';

export interface MoveSpec {
  readonly disk: string;
  /** The destination datastore. */
  readonly datastore: string;
  readonly method: MethodName;
  /** Only the `agent` driver takes tuning. */
  readonly tuning?: Partial<MethodTuning>;
  /**
   * `agent` driver only: first sample where the guest waits in the host this long, the guest
   * alone (the move's `askedAtMs` comes after it).
   */
  readonly waitsBaselineMs?: number;
}

export interface MoveOutcome {
  readonly state: 'succeeded' | 'failed' | 'cancelled';
  /** The method that finished the job (dbt may hand over to mirror). */
  readonly method: string;
  /** Date.now() just before the move was asked for, and when its end was seen. */
  readonly askedAtMs: number;
  readonly endedAtMs: number;
  /** The engine's own duration of the migration (target already created). */
  readonly durationMs: number;
  readonly downtimeMs: number | null;
  /** Date.now() when the switchover ended (the guest released), if it happened. */
  readonly switchoverAtMs: number | null;
  readonly bytesCopied: number;
  readonly passes: number;
  /** What was still to copy when the switchover began; `agent` driver only. */
  readonly dirtyAtSwitchoverBytes: number | null;
  /** Where the downtime went; `agent` driver only. */
  readonly stun: StunBreakdown | null;
  /** Where the guest waited in the host, before and during the move; `agent` driver only. */
  readonly waits: HostWaits | null;
  readonly error: string | null;
}

/** The switchover's parts (migration.ts): drain guest I/O, final copy, flush, commit. */
export interface StunBreakdown {
  readonly drainMs: number;
  readonly finalCopyMs: number;
  readonly flushMs: number;
  readonly commitMs: number;
}

/** Each part's median over the runs that reported one; null if none did. */
export function medianStun(stuns: readonly (StunBreakdown | null)[]): StunBreakdown | null {
  const known = stuns.filter((stun) => stun !== null);
  if (known.length === 0) return null;
  return {
    drainMs: medianOf(known, (stun) => stun.drainMs),
    finalCopyMs: medianOf(known, (stun) => stun.finalCopyMs),
    flushMs: medianOf(known, (stun) => stun.flushMs),
    commitMs: medianOf(known, (stun) => stun.commitMs),
  };
}

/** `drain/copy/flush/commit` in ms, or `-`. */
export function formatStun(stun: StunBreakdown | null): string {
  if (stun === null) return '-';
  const parts = [stun.drainMs, stun.finalCopyMs, stun.flushMs, stun.commitMs];
  return parts.map((ms) => ms.toFixed(1)).join('/');
}

export interface FerryHost {
  readonly driver: FerryDriverName;
  /** `nbd://127.0.0.1:PORT`; a disk's export is `${nbdUrl}/${disk}`. */
  readonly nbdUrl: string;
  addDatastore(name: string, path: string): Promise<void>;
  /** Adopts the raw image at `file` (moved into the datastore, not copied) as disk `name`. */
  importDisk(name: string, file: string, datastore: string): Promise<void>;
  /** Moves a disk and resolves once the job is over, whatever its outcome. */
  move(spec: MoveSpec): Promise<MoveOutcome>;
  stop(): Promise<void>;
}

/** Throws unless the move succeeded, with the job's error. */
export function checkSucceeded(outcome: MoveOutcome, what: string): void {
  if (outcome.state !== 'succeeded') {
    throw new Error(
      `${what}: the job ended ${outcome.state}: ${outcome.error ?? 'no error given'}`,
    );
  }
}
