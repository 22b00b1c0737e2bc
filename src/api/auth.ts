import { isIPv4 } from 'node:net';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { CREDENTIAL_SCHEME, CredentialFailure, verifyCredential } from '../host/peer-credential.js';
import { FerryError } from '../util/errors.js';
import { ApiErrorCode } from './error-table.js';

/**
 * Who may call this API (issue 7). Two kinds of caller:
 * - the local user's CLI, from a loopback address (127.0.0.0/8, ::1, ::ffff:127.x.x.x): trusted
 *   without a credential, as anyone who can run commands on this host could read the data dir;
 * - another Ferry agent, from anywhere: it must carry a `Ferry-PSK` credential signed with a key
 *   this host was given for it (`ferry host add`); see host/peer-credential.ts for the format and,
 *   plainly, what the credential does not protect (the body; replay within ±5 minutes; the API is
 *   plain HTTP, readable by anyone on the path).
 *
 * - a person or script from another address (issue 10): an API token, `Authorization: Bearer
 *   <token>`, or `?token=<token>` on a GET (the browser's EventSource sends no headers); tokens
 *   are made on this host with `ferry token create` (control/token-store.ts).
 * The dashboard's static files (`/ui/`, and `/` leading there) hold no data and need nothing.
 *
 * A request from another address without a credential, and a request from any address with a
 * credential that does not verify, get 401 `ERR_UNAUTHORIZED` with a message that says what to
 * fix, and `WWW-Authenticate: Ferry-PSK error="<reason>"` so a calling agent can tell "it does
 * not know me yet" from "our keys differ" (PeerClient reads it). The check runs in `onRequest`,
 * before the body is read, so a refused caller costs no parsing.
 *
 * `request.peerIdentity` records who was authenticated: the key identity, or null for a
 * loopback caller without a credential.
 */
declare module 'fastify' {
  interface FastifyRequest {
    /** The PSK identity whose credential this request carried; null for a trusted local caller. */
    peerIdentity: string | null;
    /** The API token (by name) this request carried (issue 10); null without one. */
    tokenName: string | null;
  }
}

export { signRequest } from '../host/peer-credential.js';

export interface PeerAuthOptions {
  /** The key of a peer's identity (PeerRegistry.keyFor); undefined for an unknown identity. */
  readonly keyFor: (identity: string) => Buffer | undefined;
  /** This host's clock, in ms since the epoch; default `Date.now` (tests move it). */
  readonly nowMs?: () => number;
  /**
   * The name of an API token (control/token-store.ts), or undefined for one this host does not
   * know. Without it no token is accepted.
   */
  readonly tokenName?: (token: string) => string | undefined;
}

/** Adds the `onRequest` check and the `peerIdentity` and `tokenName` decorators to `app`. */
export function registerPeerAuth(app: FastifyInstance, options: PeerAuthOptions): void {
  const nowMs = options.nowMs ?? Date.now;
  app.decorateRequest('peerIdentity', null);
  app.decorateRequest('tokenName', null);
  app.addHook('onRequest', async (request, reply) => {
    // The page's own address may carry ?token= for its API calls; the files need none.
    if (isPublicAsset(request.method, request.url)) return;
    const header = request.headers.authorization;
    const token = bearerToken(header) ?? queryToken(request.method, request.url);
    if (token !== undefined) {
      // A token is checked wherever it comes from, loopback too: a wrong FERRY_TOKEN is
      // reported at once rather than when the same command is run from another host.
      const name = options.tokenName?.(token);
      if (name === undefined) refuseToken(reply);
      request.tokenName = name;
      return;
    }
    if (header === undefined) {
      if (isLoopback(request.ip)) return;
      refuseMissing(reply, request.ip, request.method, request.url);
    }
    const check = verifyCredential(header, request.method, request.url, nowMs(), options.keyFor);
    if (!check.isValid) refuse(reply, check.failure, check.message);
    request.peerIdentity = check.identity;
  });
}

const BEARER = /^Bearer\s+(\S+)\s*$/i;
const TOKEN_HELP =
  'create a token on the Ferry host with "ferry token create NAME" (from that host itself) and ' +
  'send it as "Authorization: Bearer <token>" (the CLI sends FERRY_TOKEN)';

function bearerToken(header: string | undefined): string | undefined {
  if (header === undefined) return undefined;
  return BEARER.exec(header)?.[1];
}

/**
 * `?token=` for GET and HEAD only: the browser's EventSource cannot send a header. A change must
 * not ride in a URL, which ends up in histories and proxy logs; it is refused with advice.
 */
function queryToken(method: string, url: string): string | undefined {
  const query = url.indexOf('?');
  if (query < 0) return undefined;
  const token = new URLSearchParams(url.slice(query + 1)).get('token');
  if (token === null) return undefined;
  if (method === 'GET' || method === 'HEAD') return token;
  throw new FerryError(
    ApiErrorCode.Unauthorized,
    `?token= is accepted on GET requests only; send ${method} requests with ` +
      '"Authorization: Bearer <token>" instead',
  );
}

/** The dashboard's files hold no data (issue 10): `/ui/...` and `/`, which leads there. */
function isPublicAsset(method: string, url: string): boolean {
  if (method !== 'GET' && method !== 'HEAD') return false;
  const path = url.split('?', 1)[0] ?? '';
  return path === '/' || path === '/ui' || path.startsWith('/ui/');
}

function refuseToken(reply: FastifyReply): never {
  reply.header('www-authenticate', 'Bearer realm="ferry", error="invalid_token"');
  throw new FerryError(
    ApiErrorCode.Unauthorized,
    `this host knows no such API token (removed, or mistyped); ${TOKEN_HELP}; ` +
      '"ferry token list" shows the tokens it knows',
  );
}

function refuseMissing(reply: FastifyReply, ip: string, method: string, url: string): never {
  // The Ferry-PSK challenge as before (a peer agent's PeerClient reads its error); the message
  // tells people about tokens.
  reply.header('www-authenticate', `${CREDENTIAL_SCHEME} error="${CredentialFailure.Missing}"`);
  throw new FerryError(
    ApiErrorCode.Unauthorized,
    `${method} ${url.split('?', 1)[0]} from ${ip}: callers from other addresses than loopback ` +
      `need a credential. People and scripts: ${TOKEN_HELP}. Ferry agents on other hosts: the ` +
      'key this host was given for them (ferry host add)',
  );
}

function refuse(reply: FastifyReply, failure: CredentialFailure, message: string): never {
  reply.header('www-authenticate', `${CREDENTIAL_SCHEME} error="${failure}"`);
  throw new FerryError(ApiErrorCode.Unauthorized, message);
}

/** 127.0.0.0/8, ::1, and IPv4 loopback mapped into IPv6. */
export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  if (address === '::1') return true;
  const v4 = address.toLowerCase().startsWith('::ffff:') ? address.slice(7) : address;
  return isIPv4(v4) && v4.startsWith('127.');
}
