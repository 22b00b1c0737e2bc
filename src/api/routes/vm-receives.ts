import type { FastifyInstance } from 'fastify';
import type { Agent } from '../../host/agent.js';
import type { VmReceiveRequest } from '../../host/vm-receiver.js';
import { type AdmitReceive, admitted, peerOf } from './receives.js';

/**
 * `/v1/vm-receives`: the destination side of a VM moving here from another host
 * (host/vm-receiver.ts), called by the source host's agent only, signed with a peer's key.
 *
 *   POST /v1/vm-receives/admission     would this host take the VM now (its limits)? No state
 *   POST /v1/vm-receives               home files, config and empty disks; answers the exports
 *   POST /v1/vm-receives/:id/incoming  start the VM's QEMU waiting for memory: { port }
 *   POST /v1/vm-receives/:id/commit    the one commit point of the VM's disks
 *   POST /v1/vm-receives/:id/resolve   committed, or abort now
 *   POST /v1/vm-receives/:id/abort     drop everything (before the commit)
 *   POST /v1/vm-receives/:id/finish    the memory moved (or not): announce, or unregister
 */
const ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$';
/** A home carries a kernel and an initrd (tens of MiB, base64); the default 1 MiB would refuse. */
const RECEIVE_BODY_MAX_BYTES = 768 * 1024 * 1024;

const idParamsSchema = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: ID_PATTERN } },
} as const;

const nameMapSchema = {
  type: 'object',
  maxProperties: 64,
  additionalProperties: { type: 'string', minLength: 1, maxLength: 64 },
} as const;

/** What the admission needs of a VM receive: where its home and its disks would go. */
interface AdmissionBody {
  readonly id: string;
  readonly datastore?: string;
  readonly datastoreMap?: Readonly<Record<string, string>>;
  readonly disks: readonly { readonly from: string }[];
}

const admissionBodySchema = {
  type: 'object',
  required: ['id', 'disks'],
  additionalProperties: false,
  properties: {
    id: { type: 'string', pattern: ID_PATTERN },
    datastore: { type: 'string', minLength: 1, maxLength: 64 },
    datastoreMap: nameMapSchema,
    disks: {
      type: 'array',
      minItems: 1,
      maxItems: 64,
      items: {
        type: 'object',
        required: ['from'],
        additionalProperties: false,
        properties: { from: { type: 'string', minLength: 1, maxLength: 64 } },
      },
    },
  },
} as const;

const receiveBodySchema = {
  type: 'object',
  required: ['id', 'config', 'sourceHost', 'disks', 'files'],
  additionalProperties: false,
  properties: {
    id: { type: 'string', pattern: ID_PATTERN },
    // Checked by vm-config.ts's parser, which says what is wrong.
    config: { type: 'object' },
    sourceHost: { type: 'string', minLength: 1, maxLength: 255 },
    datastore: { type: 'string', minLength: 1, maxLength: 64 },
    datastoreMap: nameMapSchema,
    networkMap: nameMapSchema,
    disks: {
      type: 'array',
      minItems: 1,
      maxItems: 64,
      items: {
        type: 'object',
        required: ['disk', 'sizeBytes', 'provisioning', 'generation', 'createdAt', 'from'],
        additionalProperties: false,
        properties: {
          disk: { type: 'string', minLength: 1, maxLength: 64 },
          sizeBytes: { type: 'integer', minimum: 512 },
          provisioning: { type: 'string', enum: ['thin', 'thick'] },
          generation: { type: 'integer', minimum: 1 },
          createdAt: { type: 'string', minLength: 1 },
          from: { type: 'string', minLength: 1, maxLength: 64 },
        },
      },
    },
    files: {
      type: 'array',
      maxItems: 64,
      items: {
        type: 'object',
        required: ['name', 'data'],
        additionalProperties: false,
        properties: {
          name: { type: 'string', minLength: 1, maxLength: 64 },
          data: { type: 'string' },
        },
      },
    },
  },
} as const;

export function registerVmReceiveRoutes(
  app: FastifyInstance,
  agent: Agent,
  nbdPort: number,
  admit?: AdmitReceive,
): void {
  const { vmReceiver } = agent;
  /** One move, as its job on the source: its home's datastore and each of its disks'. */
  const datastoresOf = (body: AdmissionBody): string[] => [
    agent.datastoreNameFor(body.datastore),
    ...body.disks.map((disk) =>
      agent.datastoreNameFor(body.datastoreMap?.[disk.from] ?? body.datastore),
    ),
  ];

  // Asked before the receive itself, whose body carries the home's files (tens of MiB): a busy
  // host says so (503 ERR_HOST_BUSY) before they travel. The receive is admitted again, for real.
  app.post<{ Body: AdmissionBody }>(
    '/v1/vm-receives/admission',
    { schema: { body: admissionBodySchema } },
    async (request) => {
      peerOf(request);
      const { body } = request;
      await admitted(
        admit,
        body.id,
        () => datastoresOf(body),
        async () => undefined,
      );
      return { admitted: true };
    },
  );

  app.post<{ Body: VmReceiveRequest }>(
    '/v1/vm-receives',
    { schema: { body: receiveBodySchema }, bodyLimit: RECEIVE_BODY_MAX_BYTES },
    async (request, reply) => {
      const identity = peerOf(request);
      const { body } = request;
      const ticket = await admitted(
        admit,
        body.id,
        () => datastoresOf(body),
        () => vmReceiver.receive(body, identity),
      );
      return reply.status(201).send({ ...ticket, nbdPort });
    },
  );

  app.post<{ Params: { id: string } }>(
    '/v1/vm-receives/:id/incoming',
    { schema: { params: idParamsSchema } },
    async (request) => {
      peerOf(request);
      return vmReceiver.incoming(request.params.id);
    },
  );

  app.post<{ Params: { id: string }; Body: { consoleTail?: string } }>(
    '/v1/vm-receives/:id/commit',
    {
      schema: {
        params: idParamsSchema,
        body: {
          type: 'object',
          additionalProperties: false,
          properties: { consoleTail: { type: 'string', maxLength: 2 * 1024 * 1024 } },
        },
      },
    },
    async (request) => {
      peerOf(request);
      return { state: await vmReceiver.commit(request.params.id, request.body.consoleTail) };
    },
  );

  app.post<{ Params: { id: string }; Body: { vm: string } }>(
    '/v1/vm-receives/:id/resolve',
    {
      schema: {
        params: idParamsSchema,
        body: {
          type: 'object',
          required: ['vm'],
          additionalProperties: false,
          properties: { vm: { type: 'string', minLength: 1, maxLength: 64 } },
        },
      },
    },
    async (request) => {
      peerOf(request);
      return { state: await vmReceiver.resolve(request.params.id, request.body.vm) };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/v1/vm-receives/:id/abort',
    { schema: { params: idParamsSchema } },
    async (request) => {
      peerOf(request);
      await vmReceiver.abort(request.params.id);
      return { state: 'aborted' };
    },
  );

  app.post<{ Params: { id: string }; Body: { memoryMoved: boolean } }>(
    '/v1/vm-receives/:id/finish',
    {
      schema: {
        params: idParamsSchema,
        body: {
          type: 'object',
          required: ['memoryMoved'],
          additionalProperties: false,
          properties: { memoryMoved: { type: 'boolean' } },
        },
      },
    },
    async (request) => {
      peerOf(request);
      return vmReceiver.finish(request.params.id, request.body.memoryMoved);
    },
  );
}
