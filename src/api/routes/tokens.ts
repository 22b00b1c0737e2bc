import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { TokenStore } from '../../control/token-store.js';
import { FerryError } from '../../util/errors.js';
import { isLoopback } from '../auth.js';
import { ApiErrorCode } from '../error-table.js';
import {
  type CreateTokenBody,
  createTokenBodySchema,
  type NameParams,
  nameParamsSchema,
} from '../schemas.js';

/**
 * `/v1/tokens`: API tokens (control/token-store.ts), managed from this host only. A token lets
 * its holder in from anywhere; letting a token holder mint more would make a leaked token
 * permanent, so the local user (loopback, as `ferry token` calls it) alone manages them.
 */
export function registerTokenRoutes(app: FastifyInstance, tokens: TokenStore): void {
  const onlyLoopback = async (request: FastifyRequest): Promise<void> => {
    if (isLoopback(request.ip)) return;
    throw new FerryError(
      ApiErrorCode.Forbidden,
      `API tokens are managed only from the Ferry host itself (this call came from ${request.ip}); ` +
        'run "ferry token create|list|rm" there',
    );
  };
  const tags = ['tokens'];

  app.get(
    '/v1/tokens',
    { preHandler: onlyLoopback, schema: { summary: 'List API tokens (no secrets)', tags } },
    async () => ({ tokens: tokens.list() }),
  );

  app.post<{ Body: CreateTokenBody }>(
    '/v1/tokens',
    {
      preHandler: onlyLoopback,
      schema: {
        summary: 'Create an API token; the reply holds it once',
        tags,
        body: createTokenBodySchema,
      },
    },
    async (request, reply) => reply.status(201).send(tokens.create(request.body.name)),
  );

  app.delete<{ Params: NameParams }>(
    '/v1/tokens/:name',
    {
      preHandler: onlyLoopback,
      schema: { summary: 'Remove an API token', tags, params: nameParamsSchema },
    },
    async (request, reply) => {
      tokens.remove(request.params.name);
      return reply.status(204).send();
    },
  );
}
