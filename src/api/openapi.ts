import { fastifySwagger } from '@fastify/swagger';
import type { FastifyInstance, FastifySchema } from 'fastify';

/**
 * `GET /v1/openapi.json` (issue 10, "Polish"): the OpenAPI 3 document @fastify/swagger builds from
 * the route schemas (schemas.ts) as the routes are added, so the document cannot drift from what
 * the API validates. Call it before the routes are added: the plugin learns them through an
 * `onRoute` hook, and Fastify runs `onRoute` hooks as each route is declared. So the plugin's
 * function is applied to `app` at once rather than through `register`, which would load it only
 * at `ready`, after createApi had declared every route (the document would list none).
 */
export function registerOpenApi(app: FastifyInstance, version: string): void {
  const options = {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'Ferry API',
        description:
          'Live storage migration: datastores, disks, VMs, hosts and migration jobs. Loopback ' +
          'callers need no credential; others send "Authorization: Bearer <token>" (ferry token ' +
          'create) or, for GET, ?token=<token>.',
        version,
      },
      components: {
        securitySchemes: { token: { type: 'http' as const, scheme: 'bearer' } },
      },
      security: [{ token: [] }],
    },
    // Group the operations by resource (`/v1/jobs/{id}/cancel` → `jobs`) so route files need
    // not repeat it; a route's own `tags` win.
    transform: ({ schema, url }: { schema: FastifySchema | undefined; url: string }) => ({
      schema: {
        ...schema,
        tags: (schema as { tags?: string[] } | undefined)?.tags ?? [resourceOf(url)],
      },
      url,
    }),
  };
  fastifySwagger(app, options, (error) => {
    if (error) throw error;
  });
  app.get('/v1/openapi.json', { schema: { hide: true } }, async (_request, reply) =>
    reply.type('application/json').send(app.swagger()),
  );
}

/** `/v1/jobs/:id` → `jobs`; `/metrics` → `metrics`. */
function resourceOf(url: string): string {
  const parts = url.split('/').filter((part) => part !== '');
  return (parts[0] === 'v1' ? parts[1] : parts[0]) ?? 'ferry';
}
