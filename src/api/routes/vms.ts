import type { FastifyInstance } from 'fastify';
import type { Agent } from '../../host/agent.js';
import { parseSize } from '../../util/size.js';
import {
  type AddNetworkBody,
  addNetworkBodySchema,
  type CreateVmBody,
  createVmBodySchema,
  type NameParams,
  nameParamsSchema,
  type StopVmBody,
  stopVmBodySchema,
} from '../schemas.js';

/**
 * `/v1/vms`: register (a home directory with the VM's config, naming its disks), list, show,
 * start, stop, read the serial console of, and unregister VMs. Unregistering deletes the home
 * directory, never the disks. Moving one is `POST /v1/migrations` with `vm` (jobs.ts).
 * `/v1/networks`: the names of this host's bridges that NICs join.
 */
export function registerVmRoutes(app: FastifyInstance, agent: Agent): void {
  app.get('/v1/vms', async () => ({ vms: await agent.listVms() }));

  app.post<{ Body: CreateVmBody }>(
    '/v1/vms',
    { schema: { body: createVmBodySchema } },
    async (request, reply) => {
      const { name, disks, datastore, memory, cpus, accel, kernel, initrd, append, nics } =
        request.body;
      const vm = await agent.createVm({
        name,
        disks: disks.map(parseDiskSpec),
        ...(datastore === undefined ? {} : { datastore }),
        ...(memory === undefined
          ? {}
          : { memoryBytes: typeof memory === 'number' ? memory : parseSize(memory) }),
        ...(cpus === undefined ? {} : { cpus }),
        ...(accel === undefined ? {} : { accel }),
        ...(kernel === undefined ? {} : { kernel }),
        ...(initrd === undefined ? {} : { initrd }),
        ...(append === undefined ? {} : { append }),
        ...(nics === undefined ? {} : { nics }),
      });
      return reply.status(201).send(vm);
    },
  );

  app.get<{ Params: NameParams }>(
    '/v1/vms/:name',
    { schema: { params: nameParamsSchema } },
    async (request) => agent.getVm(request.params.name),
  );

  app.post<{ Params: NameParams }>(
    '/v1/vms/:name/start',
    { schema: { params: nameParamsSchema } },
    async (request) => agent.vms.start(request.params.name),
  );

  app.post<{ Params: NameParams; Body: StopVmBody | undefined }>(
    '/v1/vms/:name/stop',
    { schema: { params: nameParamsSchema, body: stopVmBodySchema } },
    async (request) => {
      const body = request.body ?? {};
      return agent.vms.stop(request.params.name, {
        ...(body.force === undefined ? {} : { force: body.force }),
        ...(body.timeoutSeconds === undefined ? {} : { timeoutMs: body.timeoutSeconds * 1000 }),
      });
    },
  );

  app.get<{ Params: NameParams; Querystring: { bytes?: string } }>(
    '/v1/vms/:name/log',
    {
      schema: {
        params: nameParamsSchema,
        // A query string is text (app.ts does not coerce types): digits, read as bytes.
        querystring: {
          type: 'object',
          properties: { bytes: { type: 'string', pattern: '^[1-9][0-9]{0,12}$' } },
        },
      },
    },
    async (request) => ({
      vm: request.params.name,
      log: await agent.vms.consoleLog(
        request.params.name,
        request.query.bytes === undefined ? undefined : Number(request.query.bytes),
      ),
    }),
  );

  app.delete<{ Params: NameParams }>(
    '/v1/vms/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await agent.removeVm(request.params.name);
      return reply.status(204).send();
    },
  );

  app.get('/v1/networks', async () => ({ networks: agent.vms.networks.list() }));

  app.post<{ Body: AddNetworkBody }>(
    '/v1/networks',
    { schema: { body: addNetworkBodySchema } },
    async (request, reply) => {
      const network = await agent.vms.addNetwork(request.body.name, request.body.bridge);
      return reply.status(201).send(network);
    },
  );

  app.delete<{ Params: NameParams }>(
    '/v1/networks/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await agent.vms.removeNetwork(request.params.name);
      return reply.status(204).send();
    },
  );
}

/** `NAME` or `NAME:SIZE` (created when missing). */
function parseDiskSpec(spec: string): string | { name: string; sizeBytes: number } {
  const colon = spec.lastIndexOf(':');
  if (colon < 0) return spec;
  return { name: spec.slice(0, colon), sizeBytes: parseSize(spec.slice(colon + 1)) };
}
