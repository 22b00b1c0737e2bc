import type { FastifyInstance } from 'fastify';
import { ClusterError, ClusterErrorCode, type ClusterSettings } from '../../control/clusters.js';
import type { DrsService } from '../../control/drs-service.js';
import { isValidName, NAME_HELP } from '../../host/names.js';
import { parseSize } from '../../util/size.js';
import { type NameParams, nameParamsSchema } from '../schemas.js';

/**
 * `/v1/clusters`: datastore clusters (issue 10), and
 * `/v1/datastores/:name/capacity`: the capacity DRS counts for a datastore that shares its file
 * system with others (control/drs-service.ts says why).
 */
const settingsProperties = {
  spaceThreshold: { type: 'number', exclusiveMinimum: 0, maximum: 1 },
  latencyThresholdMs: { type: 'number', exclusiveMinimum: 0 },
  automation: { type: 'string', enum: ['manual', 'automatic'] },
  intervalSeconds: { type: 'integer', minimum: 1 },
  keepVmDisksTogether: { type: 'boolean' },
} as const;

const datastoresSchema = {
  type: 'array',
  minItems: 1,
  maxItems: 64,
  items: { type: 'string', minLength: 1, maxLength: 64 },
} as const;

const createClusterBodySchema = {
  type: 'object',
  required: ['name', 'datastores'],
  additionalProperties: false,
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 64, description: NAME_HELP },
    datastores: datastoresSchema,
    ...settingsProperties,
  },
} as const;

const patchClusterBodySchema = {
  type: 'object',
  additionalProperties: false,
  properties: { datastores: datastoresSchema, ...settingsProperties },
} as const;

const capacityBodySchema = {
  type: 'object',
  required: ['capacity'],
  additionalProperties: false,
  properties: {
    capacity: {
      description: 'bytes, or a size such as "10G" (powers of 1024)',
      anyOf: [
        { type: 'string', minLength: 1, maxLength: 32 },
        { type: 'integer', minimum: 1 },
      ],
    },
  },
} as const;

type SettingsBody = Partial<ClusterSettings> & { datastores?: string[] };

export function registerClusterRoutes(app: FastifyInstance, drs: DrsService): void {
  app.get('/v1/clusters', async () => ({ clusters: await drs.clusters() }));

  app.post<{ Body: SettingsBody & { name: string; datastores: string[] } }>(
    '/v1/clusters',
    { schema: { body: createClusterBodySchema } },
    async (request, reply) => {
      const { name, datastores, ...settings } = request.body;
      if (!isValidName(name)) {
        throw new ClusterError(
          ClusterErrorCode.BadSetting,
          `bad cluster name ${name}: ${NAME_HELP}`,
        );
      }
      await requireDatastores(drs, datastores);
      drs.store.create(name, datastores, settings);
      return reply.status(201).send(await drs.cluster(name));
    },
  );

  app.get<{ Params: NameParams }>(
    '/v1/clusters/:name',
    { schema: { params: nameParamsSchema } },
    async (request) => drs.cluster(request.params.name),
  );

  app.patch<{ Params: NameParams; Body: SettingsBody }>(
    '/v1/clusters/:name',
    { schema: { params: nameParamsSchema, body: patchClusterBodySchema } },
    async (request) => {
      const { datastores, ...settings } = request.body;
      if (datastores !== undefined) await requireDatastores(drs, datastores);
      drs.store.update(request.params.name, settings, datastores);
      return drs.cluster(request.params.name);
    },
  );

  app.delete<{ Params: NameParams }>(
    '/v1/clusters/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      drs.store.remove(request.params.name);
      return reply.status(204).send();
    },
  );

  app.put<{ Params: NameParams; Body: { capacity: string | number } }>(
    '/v1/datastores/:name/capacity',
    { schema: { params: nameParamsSchema, body: capacityBodySchema } },
    async (request) => {
      await requireDatastores(drs, [request.params.name]);
      const { capacity } = request.body;
      drs.store.setCapacity(
        request.params.name,
        typeof capacity === 'number' ? capacity : parseSize(capacity),
      );
      return {
        name: request.params.name,
        capacityBytes: drs.store.capacityOf(request.params.name),
      };
    },
  );

  app.delete<{ Params: NameParams }>(
    '/v1/datastores/:name/capacity',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      drs.store.setCapacity(request.params.name, null);
      return reply.status(204).send();
    },
  );
}

async function requireDatastores(drs: DrsService, names: readonly string[]): Promise<void> {
  const known = new Set((await drs.usage()).map((one) => one.name));
  const unknown = names.filter((name) => !known.has(name));
  if (unknown.length > 0) {
    throw new ClusterError(
      ClusterErrorCode.NotFound,
      `no datastore named ${unknown.join(', ')}; add it first with \`ferry datastore add NAME PATH\``,
    );
  }
}
