import type { FastifyInstance } from 'fastify';
import type { DrsService } from '../../control/drs-service.js';
import type { Agent } from '../../host/agent.js';
import { parseSize } from '../../util/size.js';
import { type NbdAddress, viewDisk } from '../disk-view.js';
import {
  type CreateDiskBody,
  createDiskBodySchema,
  type ImportDiskBody,
  importDiskBodySchema,
  type NameParams,
  nameParamsSchema,
} from '../schemas.js';

/**
 * `/v1/disks`: create, import, list, show, remove disks, and read a disk's I/O counters. With
 * `drs`, a `datastore` naming a cluster places the disk on its best member, and a datastore in
 * maintenance takes no new disk (control/drs-service.ts).
 */
export function registerDiskRoutes(
  app: FastifyInstance,
  agent: Agent,
  nbd: NbdAddress,
  drs?: DrsService,
): void {
  app.get('/v1/disks', async () => {
    const disks = await agent.listDisks();
    return { disks: disks.map((disk) => viewDisk(disk, nbd)) };
  });

  app.post<{ Body: CreateDiskBody }>(
    '/v1/disks',
    { schema: { body: createDiskBodySchema } },
    async (request, reply) => {
      const { name, size, provisioning } = request.body;
      const sizeBytes = typeof size === 'number' ? size : parseSize(size);
      const requested = request.body.datastore;
      const datastore =
        requested === undefined || drs === undefined
          ? requested
          : await drs.placeNewDisk(requested, sizeBytes);
      const disk = await agent.createDisk({
        name,
        sizeBytes,
        ...(datastore === undefined ? {} : { datastore }),
        ...(provisioning === undefined ? {} : { provisioning }),
      });
      return reply.status(201).send(viewDisk(disk, nbd));
    },
  );

  app.post<{ Body: ImportDiskBody }>(
    '/v1/disks/import',
    { schema: { body: importDiskBodySchema } },
    async (request, reply) => {
      const { name, file, datastore } = request.body;
      if (datastore !== undefined) drs?.refuseIfInMaintenance(datastore);
      const disk = await agent.importDisk({
        name,
        file,
        ...(datastore === undefined ? {} : { datastore }),
      });
      return reply.status(201).send(viewDisk(disk, nbd));
    },
  );

  app.get<{ Params: NameParams }>(
    '/v1/disks/:name',
    { schema: { params: nameParamsSchema } },
    async (request) => viewDisk(await agent.getDisk(request.params.name), nbd),
  );

  app.get<{ Params: NameParams }>(
    '/v1/disks/:name/stats',
    { schema: { params: nameParamsSchema } },
    async (request) => ({ name: request.params.name, stats: agent.diskStats(request.params.name) }),
  );

  app.delete<{ Params: NameParams }>(
    '/v1/disks/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await agent.removeDisk(request.params.name);
      return reply.status(204).send();
    },
  );
}
