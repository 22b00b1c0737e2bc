import type { FastifyInstance } from 'fastify';
import type { StatsSnapshot } from '../../block/stats.js';
import type { Agent } from '../../host/agent.js';
import { EventStream } from '../event-stream.js';
import { type DiskRates, diskRates } from '../stats-rates.js';

/**
 * `GET /v1/stats/events` (issue 10): Server-Sent Events, `event: stats` every
 * `intervalMs` (1 s) with every served disk's guest I/O rates over the last interval
 * (stats-rates.ts) and every datastore's space:
 *
 *   { time, disks: [{ name, datastore, readIops, writeIops, readBytesPerSecond,
 *     writeBytesPerSecond, latencyMs }], datastores: [{ name, usedBytes, capacityBytes }] }
 *
 * One sampler serves every open stream: the disks' Stats snapshots are taken once per tick
 * whoever listens, and the timer runs only while a stream is open. A new stream gets the latest
 * sample at once, then the next ones. A `stats` event supersedes the one before, so a client
 * that falls behind skips events (EventStream's droppable events) instead of queueing them.
 * Streams end when the API closes (a `preClose` hook), as job-events.ts does.
 */
export interface StatsSample {
  readonly time: string;
  readonly disks: readonly ({ readonly name: string; readonly datastore: string } & DiskRates)[];
  readonly datastores: readonly {
    readonly name: string;
    readonly usedBytes: number | null;
    readonly capacityBytes: number | null;
  }[];
}

export interface StatsEventRouteOptions {
  /** Between two samples; 1 s by default. */
  readonly intervalMs?: number;
  /** Interval of the heartbeat comments; 15 s by default. */
  readonly heartbeatMs?: number;
}

const INTERVAL_MS_DEFAULT = 1_000;
const HEARTBEAT_MS_DEFAULT = 15_000;

export function registerStatsEventRoutes(
  app: FastifyInstance,
  agent: Agent,
  options: StatsEventRouteOptions = {},
): void {
  const intervalMs = options.intervalMs ?? INTERVAL_MS_DEFAULT;
  const heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS_DEFAULT;
  const open = new Set<EventStream>();
  /** Each disk's snapshot at the previous tick, by disk name. */
  let previous = new Map<string, StatsSnapshot>();
  let latest: StatsSample | undefined;
  let timer: NodeJS.Timeout | undefined;
  let isSampling = false;

  const tick = async (): Promise<void> => {
    const current = new Map<string, StatsSnapshot>();
    const disks = agent.exports.all().map((entry) => {
      const name = entry.descriptor.name;
      const snapshot = entry.stack.stats.snapshot();
      current.set(name, snapshot);
      return { name, datastore: entry.datastore.name, ...diskRates(previous.get(name), snapshot) };
    });
    previous = current;
    const datastores = (await agent.listDatastores()).map((d) => ({
      name: d.name,
      usedBytes:
        d.capacityBytes === null || d.freeBytes === null ? null : d.capacityBytes - d.freeBytes,
      capacityBytes: d.capacityBytes,
    }));
    // Every stream left while the datastores were read: the sample is for no one.
    if (timer === undefined) return;
    latest = { time: new Date().toISOString(), disks, datastores };
    for (const stream of open) stream.send('stats', latest, true);
  };
  const start = (): void => {
    // The first tick only takes the baseline snapshots: its rates would be all zero.
    for (const entry of agent.exports.all()) {
      previous.set(entry.descriptor.name, entry.stack.stats.snapshot());
    }
    timer = setInterval(() => {
      // One sample at a time: a tick that outlasts the interval (a slow statfs) skips the next.
      if (isSampling) return;
      isSampling = true;
      tick()
        .catch((error: unknown) => app.log.error({ err: error }, 'stats sample failed'))
        .finally(() => {
          isSampling = false;
        });
    }, intervalMs);
  };
  const stop = (): void => {
    clearInterval(timer);
    timer = undefined;
    previous = new Map();
    latest = undefined;
  };

  app.addHook('preClose', async () => {
    for (const stream of open) stream.close();
  });

  app.get('/v1/stats/events', async (_request, reply) => {
    reply.hijack();
    const stream = new EventStream(reply.raw, heartbeatMs);
    open.add(stream);
    stream.onClose(() => {
      open.delete(stream);
      if (open.size === 0) stop();
    });
    if (timer === undefined) start();
    if (latest !== undefined) stream.send('stats', latest);
  });
}
