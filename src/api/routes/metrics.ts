import type { FastifyInstance } from 'fastify';
import type { JobManager } from '../../control/job-manager.js';
import type { Agent } from '../../host/agent.js';
import { createMetrics } from '../metrics.js';

/** `GET /metrics`: Prometheus' text format, behind the same auth as every route (api/auth.ts). */
export function registerMetricsRoute(
  app: FastifyInstance,
  agent: Agent,
  jobs: JobManager | undefined,
): void {
  const metrics = createMetrics(agent, jobs);
  app.addHook('onClose', async () => metrics.close());
  app.get(
    '/metrics',
    { schema: { summary: 'Prometheus metrics', tags: ['metrics'], hide: true } },
    async (_request, reply) => {
      const text = await metrics.registry.metrics();
      return reply.type(metrics.registry.contentType).send(text);
    },
  );
}
