import type { FastifyInstance } from 'fastify';
import type { Agent } from '../../host/agent.js';
import {
  type CreateVmBody,
  createVmBodySchema,
  type NameParams,
  nameParamsSchema,
} from '../schemas.js';

/**
 * `/v1/vms`: register (a home directory naming existing disks), list, show and unregister VMs.
 * Unregistering deletes the home directory, never the disks. Moving one is
 * `POST /v1/migrations` with `vm` (jobs.ts).
 */
export function registerVmRoutes(app: FastifyInstance, agent: Agent): void {
  app.get('/v1/vms', async () => ({ vms: await agent.listVms() }));

  app.post<{ Body: CreateVmBody }>(
    '/v1/vms',
    { schema: { body: createVmBodySchema } },
    async (request, reply) => {
      const { name, disks, datastore } = request.body;
      const vm = await agent.createVm({
        name,
        disks,
        ...(datastore === undefined ? {} : { datastore }),
      });
      return reply.status(201).send(vm);
    },
  );

  app.get<{ Params: NameParams }>(
    '/v1/vms/:name',
    { schema: { params: nameParamsSchema } },
    async (request) => agent.getVm(request.params.name),
  );

  app.delete<{ Params: NameParams }>(
    '/v1/vms/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await agent.removeVm(request.params.name);
      return reply.status(204).send();
    },
  );
}
