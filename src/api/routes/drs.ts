import type { FastifyInstance } from 'fastify';
import type { DrsService } from '../../control/drs-service.js';
import { type NameParams, nameParamsSchema } from '../schemas.js';

/**
 * `/v1/drs/...`: Storage DRS recommendations and applying them, and
 * `/v1/datastores/:name/maintenance`: maintenance mode (issue 10). The service's
 * tick (sampling, maintenance progress, automatic clusters) runs while the API does.
 */
const recommendationsQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: { cluster: { type: 'string', minLength: 1, maxLength: 64 } },
} as const;

const applyBodySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    cluster: { type: 'string', minLength: 1, maxLength: 64 },
    ids: { type: 'array', maxItems: 1024, items: { type: 'string', minLength: 1, maxLength: 512 } },
  },
} as const;

export function registerDrsRoutes(app: FastifyInstance, drs: DrsService): void {
  drs.start();
  app.addHook('onClose', async () => drs.stop());

  // A move into a datastore in maintenance is refused before the job routes see it.
  app.addHook('preHandler', async (request) => {
    if (request.method !== 'POST' || request.routeOptions.url !== '/v1/migrations') return;
    const body = request.body as { datastore?: unknown; host?: unknown } | undefined;
    if (typeof body?.datastore === 'string' && body.host === undefined) {
      drs.refuseIfInMaintenance(body.datastore);
    }
  });

  app.get<{ Querystring: { cluster?: string } }>(
    '/v1/drs/recommendations',
    { schema: { querystring: recommendationsQuerySchema } },
    async (request) => {
      const { cluster } = request.query;
      if (cluster !== undefined) drs.store.get(cluster);
      return drs.recommendations(cluster);
    },
  );

  app.post<{ Body: { cluster?: string; ids?: string[] } | undefined }>(
    '/v1/drs/apply',
    {
      schema: { body: applyBodySchema },
      // No body means "everything": `curl -X POST .../v1/drs/apply` applies every cluster's.
      preValidation: async (request) => {
        request.body ??= {};
      },
    },
    async (request) => {
      const { cluster, ids } = request.body ?? {};
      if (cluster !== undefined) drs.store.get(cluster);
      return { jobs: await drs.apply(cluster, ids) };
    },
  );

  app.post<{ Params: NameParams }>(
    '/v1/datastores/:name/maintenance',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      const { state, jobs, problems } = await drs.enterMaintenance(request.params.name);
      return reply
        .status(202)
        .send({ name: request.params.name, maintenance: state, jobs, problems });
    },
  );

  app.delete<{ Params: NameParams }>(
    '/v1/datastores/:name/maintenance',
    { schema: { params: nameParamsSchema } },
    async (request) => ({
      name: request.params.name,
      maintenance: drs.exitMaintenance(request.params.name),
    }),
  );
}
