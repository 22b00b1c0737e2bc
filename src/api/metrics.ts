import { collectDefaultMetrics, Gauge, Histogram, type Metric, Registry } from 'prom-client';
import {
  LATENCY_BUCKET_COUNT,
  latencyBucketUpperUs,
  STATS_VERBS,
  type StatsSnapshot,
} from '../block/stats.js';
import type { JobManager } from '../control/job-manager.js';
import { JOB_STATES } from '../control/job-states.js';
import type { Agent } from '../host/agent.js';
import type { DatastoreInfo } from '../host/disk-info.js';

/**
 * The Prometheus view of this process (issue 10, item 5), one registry per API instance so two
 * APIs in one process (tests) never share a series. Everything but the downtime histogram is read
 * at scrape time from what the agent and the job manager already keep: the disks' Stats filters,
 * the datastores' statfs, the jobs' list. Nothing is added to the guest's I/O path.
 *
 * Names carry the `ferry_` prefix and their unit (`_bytes`, `_seconds`, `_total`).
 */
export interface FerryMetrics {
  readonly registry: Registry;
  /** Stops listening to the job manager (the API's onClose). */
  close(): void;
}

type Labels = Record<string, string>;
interface Sample {
  readonly metricName?: string;
  readonly labels: Labels;
  readonly value: number;
}

/**
 * A metric whose samples are computed at each scrape. prom-client's Counter and Histogram only
 * count what is observed through them; the Stats filter counts already, and its histogram's
 * buckets are fixed, so the samples are built from its snapshot instead of replayed into another.
 */
function scrapedMetric(
  name: string,
  help: string,
  type: 'counter' | 'histogram',
  samples: () => Sample[],
): Metric {
  const metric = {
    name,
    help,
    type,
    aggregator: 'sum',
    get: async () => ({ name, help, type, aggregator: 'sum', values: samples() }),
    reset: () => {},
  };
  return metric as unknown as Metric;
}

const MISNAMED_DEFAULT_METRICS = [
  'ferry_nodejs_active_handles_total',
  'ferry_nodejs_active_requests_total',
  'ferry_nodejs_active_resources_total',
];

/** Seconds of the log2-µs bucket bounds (stats.ts), the `le` labels of the latency histogram. */
const LATENCY_LE = Array.from({ length: LATENCY_BUCKET_COUNT }, (_, index) => {
  const upperUs = latencyBucketUpperUs(index);
  return upperUs === Number.POSITIVE_INFINITY ? '+Inf' : String(upperUs / 1e6);
});

/** Downtime buckets, seconds: from 1 ms (a mirror's flush) to 30 s (a slow cross-host VM). */
const DOWNTIME_BUCKETS_SECONDS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
];

interface DiskSnapshot {
  readonly labels: Labels;
  readonly stats: StatsSnapshot;
}

function diskSnapshots(agent: Agent): DiskSnapshot[] {
  return agent.exports.all().map((entry) => ({
    labels: { disk: entry.descriptor.name, datastore: entry.datastore.name },
    stats: entry.stack.stats.snapshot(),
  }));
}

/** One sample per disk and verb of `field`. */
function perVerb(agent: Agent, field: 'operations' | 'bytes' | 'errors'): () => Sample[] {
  return () =>
    diskSnapshots(agent).flatMap(({ labels, stats }) =>
      STATS_VERBS.map((verb) => ({
        labels: { ...labels, verb },
        value: stats.verbs[verb][field],
      })),
    );
}

/** Cumulative buckets in seconds, `_sum` and `_count`, per disk and verb. */
function latencySamples(agent: Agent): Sample[] {
  const samples: Sample[] = [];
  for (const { labels, stats } of diskSnapshots(agent)) {
    for (const verb of STATS_VERBS) {
      const verbStats = stats.verbs[verb];
      const base = { ...labels, verb };
      let cumulative = 0;
      verbStats.latency.buckets.forEach((count, index) => {
        cumulative += count;
        samples.push({
          metricName: 'ferry_disk_latency_seconds_bucket',
          labels: { ...base, le: LATENCY_LE[index] ?? '+Inf' },
          value: cumulative,
        });
      });
      samples.push({
        metricName: 'ferry_disk_latency_seconds_sum',
        labels: base,
        value: (verbStats.latency.meanUs * verbStats.operations) / 1e6,
      });
      samples.push({
        metricName: 'ferry_disk_latency_seconds_count',
        labels: base,
        value: cumulative,
      });
    }
  }
  return samples;
}

export function createMetrics(agent: Agent, jobs: JobManager | undefined): FerryMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'ferry_' });
  // prom-client names three gauges `_total`, which Prometheus reserves for counters (promtool
  // check metrics refuses them); the handle and request counts they hold are not worth that.
  for (const name of MISNAMED_DEFAULT_METRICS) registry.removeSingleMetric(name);

  registry.registerMetric(
    scrapedMetric(
      'ferry_disk_operations_total',
      "Guest requests completed on a disk, by verb (the disk's Stats filter).",
      'counter',
      perVerb(agent, 'operations'),
    ),
  );
  registry.registerMetric(
    scrapedMetric(
      'ferry_disk_bytes_total',
      'Bytes named by completed guest requests on a disk, by verb.',
      'counter',
      perVerb(agent, 'bytes'),
    ),
  );
  registry.registerMetric(
    scrapedMetric(
      'ferry_disk_errors_total',
      'Guest requests on a disk that failed, by verb.',
      'counter',
      perVerb(agent, 'errors'),
    ),
  );
  registry.registerMetric(
    scrapedMetric(
      'ferry_disk_latency_seconds',
      'Latency of completed guest requests on a disk, by verb (log2 buckets).',
      'histogram',
      () => latencySamples(agent),
    ),
  );
  new Gauge({
    name: 'ferry_disk_in_flight_requests',
    help: 'Guest requests issued to a disk and not yet settled.',
    labelNames: ['disk', 'datastore'],
    registers: [registry],
    collect() {
      this.reset();
      for (const { labels, stats } of diskSnapshots(agent)) this.set(labels, stats.inFlight);
    },
  });
  registerDatastoreGauges(registry, agent);
  const unsubscribe = jobs === undefined ? () => {} : registerJobMetrics(registry, jobs);
  return { registry, close: unsubscribe };
}

function registerDatastoreGauges(registry: Registry, agent: Agent): void {
  // The registry collects every metric at once: the three gauges share one listing (one statfs
  // per datastore) per scrape.
  let listing: Promise<DatastoreInfo[]> | undefined;
  const datastores = (): Promise<DatastoreInfo[]> => {
    listing ??= agent.listDatastores().finally(() => {
      listing = undefined;
    });
    return listing;
  };
  const gauge = (name: string, help: string, bytesOf: (datastore: DatastoreInfo) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['datastore'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const datastore of await datastores()) {
          if (datastore.capacityBytes === null || datastore.freeBytes === null) continue;
          this.set({ datastore: datastore.name }, bytesOf(datastore));
        }
      },
    });
  gauge(
    'ferry_datastore_capacity_bytes',
    'Size of the file system holding a datastore.',
    (datastore) => datastore.capacityBytes ?? 0,
  );
  gauge(
    'ferry_datastore_used_bytes',
    'Bytes in use on the file system holding a datastore.',
    (datastore) => (datastore.capacityBytes ?? 0) - (datastore.freeBytes ?? 0),
  );
  gauge(
    'ferry_datastore_free_bytes',
    'Bytes available on the file system holding a datastore.',
    (datastore) => datastore.freeBytes ?? 0,
  );
}

/** Jobs by state, each running job's rate and dirty bytes, and the downtime of those that succeeded. */
function registerJobMetrics(registry: Registry, jobs: JobManager): () => void {
  new Gauge({
    name: 'ferry_jobs',
    help: 'Jobs the job manager knows, by state (finished ones until they age out of its list).',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      const counts = new Map<string, number>(JOB_STATES.map((state) => [state, 0]));
      for (const job of jobs.list()) counts.set(job.state, (counts.get(job.state) ?? 0) + 1);
      for (const [state, count] of counts) this.set({ state }, count);
    },
  });
  const running = () => jobs.list().filter((job) => job.state === 'running');
  new Gauge({
    name: 'ferry_job_copy_rate_bytes_per_second',
    help: 'Copy rate of a running job, measured over its last seconds.',
    labelNames: ['job', 'disk'],
    registers: [registry],
    collect() {
      this.reset();
      for (const job of running()) {
        this.set({ job: job.id, disk: job.disk }, job.progress.rateBytesPerSecond);
      }
    },
  });
  new Gauge({
    name: 'ferry_job_dirty_bytes',
    help: 'Bytes a running job still has to copy.',
    labelNames: ['job', 'disk'],
    registers: [registry],
    collect() {
      this.reset();
      for (const job of running()) this.set({ job: job.id, disk: job.disk }, job.dirtyBytes);
    },
  });
  const downtime = new Histogram({
    name: 'ferry_migration_downtime_seconds',
    help: "Time guest I/O was held at a succeeded job's switchover.",
    buckets: DOWNTIME_BUCKETS_SECONDS,
    registers: [registry],
  });
  // Jobs that succeeded before the first scrape, then each one as it succeeds.
  for (const job of jobs.list()) {
    if (job.state === 'succeeded' && job.downtimeMs !== null)
      downtime.observe(job.downtimeMs / 1000);
  }
  return jobs.subscribe((event) => {
    // The one `state` event into `succeeded` per job: each switchover is observed once.
    if (event.type !== 'state' || event.job.state !== 'succeeded') return;
    if (event.job.downtimeMs !== null) downtime.observe(event.job.downtimeMs / 1000);
  });
}
