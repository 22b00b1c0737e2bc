import type { FastifyInstance } from 'fastify';
import type { JobManager } from '../../control/job-manager.js';
import type { Agent } from '../../host/agent.js';
import { createMetrics, type FerryMetrics } from '../metrics.js';

/** `GET /metrics`: Prometheus' text format, behind the same auth as every route (api/auth.ts). */
export function registerMetricsRoute(
  app: FastifyInstance,
  agent: Agent,
  jobs: JobManager | undefined,
): void {
  // Made at the first scrape: an API nobody scrapes keeps no listener on the job manager (its
  // listenerCount stays the number of open event streams) and no process-metrics observers.
  let metrics: FerryMetrics | undefined;
  app.addHook('onClose', async () => metrics?.close());
  app.get(
    '/metrics',
    { schema: { summary: 'Prometheus metrics', tags: ['metrics'], hide: true } },
    async (_request, reply) => {
      metrics ??= createMetrics(agent, jobs);
      const text = await metrics.registry.metrics();
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
}
