import type { FastifyInstance } from 'fastify';
import type { Agent } from '../../host/agent.js';
import {
  type AddDatastoreBody,
  addDatastoreBodySchema,
  type NameParams,
  nameParamsSchema,
} from '../schemas.js';

/** `/v1/datastores`: add, list, show, remove datastores. */
export function registerDatastoreRoutes(app: FastifyInstance, agent: Agent): void {
  app.get('/v1/datastores', async () => ({ datastores: await agent.listDatastores() }));

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
    async (request) => agent.getDatastore(request.params.name),
  );

  app.delete<{ Params: NameParams }>(
    '/v1/datastores/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await agent.removeDatastore(request.params.name);
      return reply.status(204).send();
    },
  );
}
