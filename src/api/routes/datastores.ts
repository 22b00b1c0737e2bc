import type { FastifyInstance } from 'fastify';
import type { DrsService } from '../../control/drs-service.js';
import type { Agent } from '../../host/agent.js';
import {
  type AddDatastoreBody,
  addDatastoreBodySchema,
  type NameParams,
  nameParamsSchema,
} from '../schemas.js';

/**
 * `/v1/datastores`: add, list, show, remove datastores. With `drs` (a database), entries carry
 * their `maintenance` state and `cluster` (control/drs-service.ts).
 */
export function registerDatastoreRoutes(
  app: FastifyInstance,
  agent: Agent,
  drs?: DrsService,
): void {
  const withClusters = async <T extends { name: string }>(info: T) =>
    drs === undefined
      ? info
      : {
          ...info,
          maintenance: drs.store.maintenanceOf(info.name),
          cluster: drs.store.clusterOf(info.name),
        };
  app.get('/v1/datastores', async () => ({
    datastores: await Promise.all((await agent.listDatastores()).map(withClusters)),
  }));

  app.post<{ Body: AddDatastoreBody }>(
    '/v1/datastores',
    { schema: { body: addDatastoreBodySchema } },
    async (request, reply) => {
      const datastore = await agent.addDatastore(request.body.name, request.body.path);
      return reply.status(201).send(datastore);
    },
  );

  app.get<{ Params: NameParams }>(
    '/v1/datastores/:name',
    { schema: { params: nameParamsSchema } },
    async (request) => withClusters(await agent.getDatastore(request.params.name)),
  );

  app.delete<{ Params: NameParams }>(
    '/v1/datastores/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await agent.removeDatastore(request.params.name);
      drs?.store.forgetDatastore(request.params.name);
      return reply.status(204).send();
    },
  );
}
