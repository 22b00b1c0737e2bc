import { QemuError, QemuErrorCode } from './qemu-errors.js';
import type { QmpClient } from './qmp-client.js';

/**
 * QEMU's own live migration of a VM's memory and device state (docs/devel/migration.rst),
 * driven over QMP on both ends. Ferry moves the disks; QEMU moves the rest. The disks are NBD
 * exports both QEMUs open, so QEMU's block migration stays off.
 *
 * The order the migrate layer follows, and why:
 * 1. Destination started with `-incoming defer`, so its capabilities and parameters can be set
 *    before it listens (`startIncoming`).
 * 2. Source: `pause-before-switchover` on, so the source stops in `pre-switchover` with its CPUs
 *    stopped and its state not yet sent: the one point where Ferry can make the disks' last
 *    writes durable and re-point the exports before the destination's guest runs. `events` on,
 *    so each status change arrives as a MIGRATION event instead of only by polling.
 * 3. `startMigration`, wait for `pre-switchover`, do the disk switchover, `continueMigration`,
 *    wait for `completed` on both ends. Or, if the disk switchover fails: `cancelMigration`,
 *    wait for `cancelled`; the source resumes its guest itself if it was running.
 *
 * Statuses (QAPI MigrationStatus in QEMU 7.2): none, setup, cancelling, cancelled, active,
 * postcopy-active, postcopy-paused, postcopy-recover, completed, failed, colo, pre-switchover,
 * device, wait-unplug. `completed`, `failed` and `cancelled` are final.
 */

export interface MigrationCapabilities {
  /** Stop in `pre-switchover` until `continueMigration` (QEMU's `pause-before-switchover`). */
  readonly pauseBeforeSwitchover: boolean;
  /** Throttle the guest's CPUs when RAM does not converge (QEMU's `auto-converge`). */
  readonly autoConverge?: boolean;
  /** Send a MIGRATION event on each status change (QEMU's `events`). */
  readonly events: boolean;
}

export interface MigrationParameters {
  /** Longest stop QEMU plans for at switchover (`downtime-limit`, ms; QEMU's default 300). */
  readonly downtimeLimitMs?: number;
  /** Cap on the migration stream (`max-bandwidth`, bytes per second; QEMU's default 128 MiB/s). */
  readonly maxBandwidthBytes?: number;
}

/** Part of `query-migrate`'s MigrationInfo, with QEMU's own field names. */
export interface MigrationInfo {
  readonly status: string;
  /** Milliseconds since the start (until completion, once completed). */
  readonly 'total-time'?: number;
  /** Milliseconds the guest was stopped, once completed. */
  readonly downtime?: number;
  readonly 'expected-downtime'?: number;
  readonly 'setup-time'?: number;
  readonly ram?: {
    readonly transferred: number;
    readonly remaining: number;
    readonly total: number;
    readonly duplicate: number;
    readonly normal: number;
    readonly 'dirty-sync-count': number;
    readonly 'dirty-pages-rate': number;
    readonly mbps: number;
    readonly 'pages-per-second'?: number;
  };
  /** Why, when status is `failed`. */
  readonly 'error-desc'?: string;
  readonly [field: string]: unknown;
}

export interface MigrationWaitOptions {
  readonly timeoutMs: number;
  /** Aborting rejects the wait with the signal's reason (the migration itself goes on). */
  readonly signal?: AbortSignal;
  /** Called with each poll's info while the status is not one waited for. */
  readonly onProgress?: (info: MigrationInfo) => void;
  /** How often `query-migrate` runs besides on events; default 500 ms. */
  readonly pollIntervalMs?: number;
}

export interface AnnounceOptions {
  /** Delay before the first round (`initial`, ms). */
  readonly initialMs?: number;
  /** Longest delay between rounds (`max`, ms). */
  readonly maxMs?: number;
  readonly rounds?: number;
  /** Growth of the delay each round (`step`, ms). */
  readonly stepMs?: number;
}

const FINAL_STATUSES: ReadonlySet<string> = new Set(['completed', 'failed', 'cancelled']);
const POLL_INTERVAL_MS_DEFAULT = 500;

/** `migrate-set-capabilities`; set on both ends before the migration starts. */
export async function enableMigrationCapabilities(
  qmp: QmpClient,
  capabilities: MigrationCapabilities,
): Promise<void> {
  const list = [
    { capability: 'pause-before-switchover', state: capabilities.pauseBeforeSwitchover },
    { capability: 'events', state: capabilities.events },
  ];
  if (capabilities.autoConverge !== undefined) {
    list.push({ capability: 'auto-converge', state: capabilities.autoConverge });
  }
  await qmp.execute('migrate-set-capabilities', { capabilities: list });
}

/** `migrate-set-parameters`; only the fields given are changed. */
export async function setMigrationParameters(
  qmp: QmpClient,
  parameters: MigrationParameters,
): Promise<void> {
  const args: Record<string, number> = {};
  if (parameters.downtimeLimitMs !== undefined) args['downtime-limit'] = parameters.downtimeLimitMs;
  if (parameters.maxBandwidthBytes !== undefined)
    args['max-bandwidth'] = parameters.maxBandwidthBytes;
  await qmp.execute('migrate-set-parameters', args);
}

/** `migrate-incoming` on a destination started with `-incoming defer`: it starts listening. */
export async function startIncoming(destinationQmp: QmpClient, uri: string): Promise<void> {
  await destinationQmp.execute('migrate-incoming', { uri });
}

/**
 * `migrate` on the source. Resolves when the migration has started, not when it ends: a
 * connection failure shows up later as status `failed` (see `waitForMigrationStatus`).
 */
export async function startMigration(sourceQmp: QmpClient, uri: string): Promise<void> {
  await sourceQmp.execute('migrate', { uri });
}

export function queryMigration(qmp: QmpClient): Promise<MigrationInfo> {
  return qmp.execute<MigrationInfo>('query-migrate');
}

/** `migrate-continue` from `pre-switchover`: the source sends its last state and stops for good. */
export async function continueMigration(sourceQmp: QmpClient): Promise<void> {
  await sourceQmp.execute('migrate-continue', { state: 'pre-switchover' });
}

/**
 * `migrate_cancel`. The source goes through `cancelling` to `cancelled` and resumes its guest if
 * it was running before; the destination's incoming migration fails and that QEMU exits.
 */
export async function cancelMigration(sourceQmp: QmpClient): Promise<void> {
  await sourceQmp.execute('migrate_cancel');
}

/**
 * `announce-self`: the destination sends gratuitous ARP/RARP from each NIC so switches learn
 * the VM's new port. Omitted options keep QEMU's migration parameters (announce-*).
 */
export async function announceSelf(qmp: QmpClient, options: AnnounceOptions = {}): Promise<void> {
  const args: Record<string, number> = {};
  if (options.initialMs !== undefined) args.initial = options.initialMs;
  if (options.maxMs !== undefined) args.max = options.maxMs;
  if (options.rounds !== undefined) args.rounds = options.rounds;
  if (options.stepMs !== undefined) args.step = options.stepMs;
  // QEMU 7.2 requires all four; fill the missing ones from its defaults (migration.c).
  await qmp.execute('announce-self', {
    initial: 50,
    max: 550,
    rounds: 5,
    step: 100,
    ...args,
  });
}

/**
 * Resolves with `query-migrate`'s info once the migration reaches one of `statuses`, learnt from
 * a MIGRATION event (so a passing status such as `setup` is not missed) or from a poll. Rejects
 * with ERR_MIGRATION_FAILED, naming QEMU's `error-desc`, when the migration ends in a final
 * status not asked for; ERR_QEMU_TIMEOUT after `timeoutMs`; the signal's reason when aborted;
 * ERR_QMP_CLOSED if QEMU goes away.
 */
export function waitForMigrationStatus(
  qmp: QmpClient,
  statuses: readonly string[],
  options: MigrationWaitOptions,
): Promise<MigrationInfo> {
  const { signal, onProgress } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<MigrationInfo>((resolve, reject) => {
    let isDone = false;
    let isPolling = false;
    const finish = (error: unknown, info?: MigrationInfo): void => {
      if (isDone) return;
      isDone = true;
      clearTimeout(timer);
      clearInterval(poller);
      stopEvents();
      signal?.removeEventListener('abort', onAbort);
      if (info !== undefined) resolve(info);
      else reject(error);
    };
    /** `status` is the one observed (event or poll); `info` is as fresh as QEMU has it. */
    const judge = (status: string, info: MigrationInfo): void => {
      if (statuses.includes(status)) finish(undefined, info);
      else if (FINAL_STATUSES.has(status)) finish(endedError(status, statuses, info));
      else onProgress?.(info);
    };
    const check = async (observed: string | undefined): Promise<void> => {
      try {
        const info = await queryMigration(qmp);
        if (!isDone) judge(observed ?? info.status, info);
      } catch (error) {
        finish(error);
      }
    };
    const poll = async (): Promise<void> => {
      if (isPolling || isDone) return;
      isPolling = true;
      await check(undefined);
      isPolling = false;
    };
    const stopEvents = qmp.onEvent((event) => {
      if (event.event !== 'MIGRATION' || isDone) return;
      const status = event.data.status;
      if (typeof status === 'string') void check(status);
    });
    const onAbort = (): void => finish(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(
      () =>
        finish(
          new QemuError(
            QemuErrorCode.Timeout,
            `migration on ${qmp.path} did not reach ${statuses.join(' or ')} within ${options.timeoutMs} ms`,
          ),
        ),
      options.timeoutMs,
    );
    const poller = setInterval(
      () => void poll(),
      options.pollIntervalMs ?? POLL_INTERVAL_MS_DEFAULT,
    );
    void poll();
  });
}

function endedError(status: string, statuses: readonly string[], info: MigrationInfo): QemuError {
  const why =
    info['error-desc'] ?? (status === 'cancelled' ? 'it was cancelled' : 'no reason given');
  return new QemuError(
    QemuErrorCode.MigrationFailed,
    `live migration ended in ${status} while waiting for ${statuses.join(' or ')}: ${why}`,
  );
}
