import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';

/**
 * The web dashboard (issue 10): static files under `/ui/`, and `GET /` redirecting there. The
 * page holds no data; it reads the API from the browser (`/v1/...`), with the token it was
 * opened with (`/ui/?token=...`), so the assets themselves need no credential (issue 10).
 *
 * The assets are plain HTML, CSS and JavaScript modules in `src/web/assets/` — tsc compiles only
 * `.ts`, and the browser needs no build step — read once at registration from the package root
 * (three levels above this compiled module, dist/src/web/, as util/package-version.ts finds it;
 * a tree run from its sources has them next to this file). Only the files found then are served,
 * by exact name: a request names a key of that table, never a path on disk.
 */
const CONTENT_TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.svg': 'image/svg+xml',
};

/** The page loads only its own files and talks only to this API (the event streams too). */
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  // The browser revalidates; a dashboard from an older Ferry must not outlive an upgrade.
  'cache-control': 'no-cache',
} as const;

interface Asset {
  readonly body: Buffer;
  readonly contentType: string;
}

/** Where the assets are: next to the sources, or under the package root above dist/. */
export function findAssetDirectory(): string | undefined {
  const candidates = [
    fileURLToPath(new URL('./assets/', import.meta.url)),
    fileURLToPath(new URL('../../../src/web/assets/', import.meta.url)),
  ];
  return candidates.find((path) => existsSync(join(path, 'index.html')));
}

function loadAssets(directory: string): Map<string, Asset> {
  const assets = new Map<string, Asset>();
  for (const name of readdirSync(directory)) {
    const contentType = CONTENT_TYPES[extname(name)];
    if (contentType === undefined) continue;
    assets.set(name, { body: readFileSync(join(directory, name)), contentType });
  }
  return assets;
}

export function registerDashboardRoutes(app: FastifyInstance): void {
  const directory = findAssetDirectory();
  const assets = directory === undefined ? new Map<string, Asset>() : loadAssets(directory);
  const missing =
    'the dashboard files (src/web/assets/) are not in this installation; ' +
    'reinstall Ferry from a tree that has them';

  // The query (`?token=...`) follows the redirect: the page reads its token from it.
  const toUi = (url: string): string =>
    `/ui/${url.includes('?') ? url.slice(url.indexOf('?')) : ''}`;
  app.get('/', async (request, reply) => reply.redirect(toUi(request.url), 302));
  app.get('/ui', async (request, reply) => reply.redirect(toUi(request.url), 302));

  const send = (reply: FastifyReply, name: string): FastifyReply => {
    const asset = assets.get(name);
    if (asset === undefined) {
      const message = directory === undefined ? missing : `no dashboard file ${name}; open /ui/`;
      // The API's own 404 code (api/error-table.ts), so clients read one shape of error.
      return reply.status(404).send({ error: { code: 'ERR_NO_ROUTE', message } });
    }
    return reply.headers(SECURITY_HEADERS).type(asset.contentType).send(asset.body);
  };
  app.get('/ui/', async (_request, reply) => send(reply, 'index.html'));
  app.get<{ Params: { file: string } }>('/ui/:file', async (request, reply) =>
    send(reply, request.params.file),
  );
}
