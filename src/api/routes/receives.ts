import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Agent } from '../../host/agent.js';
import { FerryError } from '../../util/errors.js';
import { ApiErrorCode } from '../error-table.js';

/**
 * `/v1/receives`: the destination side of a cross-host disk move (host/receiver.ts), called by
 * the source host's agent only — never by a user. Every route requires a peer's credential
 * (api/auth.ts), even from loopback: the receiving export is shown only to the key identity
 * that asked for it.
 *
 *   POST /v1/receives               create the empty destination; answers the export to write
 *   POST /v1/receives/:id/commit    the commit point; answers { state: 'committed' }
 *   POST /v1/receives/:id/resolve   committed, or abort now: { state: 'committed' | 'aborted' }
 *   POST /v1/receives/:id/reattach  the source resumes after its restart: the ticket again
 *   POST /v1/receives/:id/abort     drop the copy (before a commit)
 *   POST /v1/receives/:id/finish    the source recorded the commit
 *   GET  /v1/receives               what is arriving, for the destination's operator
 */
interface ReceiveBody {
  id: string;
  disk: string;
  sizeBytes: number;
  provisioning: 'thin' | 'thick';
  generation: number;
  createdAt: string;
  sourceHost: string;
  datastore?: string;
}

const ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$';

const receiveBodySchema = {
  type: 'object',
  required: ['id', 'disk', 'sizeBytes', 'provisioning', 'generation', 'createdAt', 'sourceHost'],
  additionalProperties: false,
  properties: {
    id: { type: 'string', pattern: ID_PATTERN },
    disk: { type: 'string', minLength: 1, maxLength: 255 },
    sizeBytes: { type: 'integer', minimum: 512 },
    provisioning: { type: 'string', enum: ['thin', 'thick'] },
    generation: { type: 'integer', minimum: 1 },
    createdAt: { type: 'string', minLength: 1 },
    sourceHost: { type: 'string', minLength: 1, maxLength: 255 },
    datastore: { type: 'string', minLength: 1, maxLength: 255 },
  },
} as const;

interface IdParams {
  id: string;
}

const idParamsSchema = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: ID_PATTERN } },
} as const;

interface CommitBody {
  /** The source wrote the image over shared storage: it sees this datastore too. */
  shared?: boolean;
}

const commitBodySchema = {
  type: 'object',
  additionalProperties: false,
  properties: { shared: { type: 'boolean' } },
} as const;

interface ResolveBody {
  disk: string;
  generation: number;
}

const resolveBodySchema = {
  type: 'object',
  required: ['disk', 'generation'],
  additionalProperties: false,
  properties: {
    disk: { type: 'string', minLength: 1, maxLength: 255 },
    generation: { type: 'integer', minimum: 1 },
  },
} as const;

/**
 * Takes this host's migration slots for a move another host asks to make here (the job
 * manager's `admitReceive`), or throws `ERR_HOST_BUSY`; the returned function lets them go once
 * the receive is listed (it then holds them itself) or failed. Absent: no limits (no job manager).
 */
export type AdmitReceive = (id: string, datastores: readonly string[]) => () => void;

/** Runs `receive` holding an admission for it, if there are limits to keep. */
export async function admitted<T>(
  admit: AdmitReceive | undefined,
  id: string,
  datastores: () => readonly string[],
  receive: () => Promise<T>,
): Promise<T> {
  const release = admit?.(id, datastores());
  try {
    return await receive();
  } finally {
    release?.();
  }
}

export function registerReceiveRoutes(
  app: FastifyInstance,
  agent: Agent,
  nbdPort: number,
  admit?: AdmitReceive,
): void {
  const { receiver } = agent;

  app.get('/v1/receives', async () => ({ receives: receiver.list() }));

  app.post<{ Body: ReceiveBody }>(
    '/v1/receives',
    { schema: { body: receiveBodySchema } },
    async (request, reply) => {
      const identity = peerOf(request);
      const { body } = request;
      const ticket = await admitted(
        admit,
        body.id,
        () => [agent.datastoreNameFor(body.datastore)],
        () => receiver.receive(body, identity),
      );
      return reply.status(201).send({ ...ticket, nbdPort });
    },
  );

  app.post<{ Params: IdParams; Body: CommitBody }>(
    '/v1/receives/:id/commit',
    { schema: { params: idParamsSchema, body: commitBodySchema } },
    async (request) => {
      peerOf(request);
      return { state: await receiver.commit(request.params.id, request.body.shared === true) };
    },
  );

  app.post<{ Params: IdParams; Body: ResolveBody }>(
    '/v1/receives/:id/resolve',
    { schema: { params: idParamsSchema, body: resolveBodySchema } },
    async (request) => {
      peerOf(request);
      const { disk, generation } = request.body;
      return { state: await receiver.resolve(request.params.id, disk, generation) };
    },
  );

  app.post<{ Params: IdParams }>(
    '/v1/receives/:id/reattach',
    { schema: { params: idParamsSchema } },
    async (request) => {
      const identity = peerOf(request);
      return { ...(await receiver.reattach(request.params.id, identity)), nbdPort };
    },
  );

  app.post<{ Params: IdParams }>(
    '/v1/receives/:id/abort',
    { schema: { params: idParamsSchema } },
    async (request) => {
      peerOf(request);
      await receiver.abort(request.params.id);
      return { state: 'aborted' };
    },
  );

  app.post<{ Params: IdParams }>(
    '/v1/receives/:id/finish',
    { schema: { params: idParamsSchema } },
    async (request) => {
      peerOf(request);
      await receiver.finish(request.params.id);
      return { state: 'finished' };
    },
  );
}

/** The peer identity that signed the request; a call without one is refused. */
export function peerOf(request: FastifyRequest): string {
  const identity = request.peerIdentity;
  if (identity === null) {
    throw new FerryError(
      ApiErrorCode.Unauthorized,
      'only a peer agent, signing with a shared key, may send a disk here (ferry migrate --to-host)',
    );
  }
  return identity;
}
