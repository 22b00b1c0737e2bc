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
  }
}

export { signRequest } from '../host/peer-credential.js';

export interface PeerAuthOptions {
  /** The key of a peer's identity (PeerRegistry.keyFor); undefined for an unknown identity. */
  readonly keyFor: (identity: string) => Buffer | undefined;
  /** This host's clock, in ms since the epoch; default `Date.now` (tests move it). */
  readonly nowMs?: () => number;
}

/** Adds the `onRequest` check and the `peerIdentity` decorator to `app`. */
export function registerPeerAuth(app: FastifyInstance, options: PeerAuthOptions): void {
  const nowMs = options.nowMs ?? Date.now;
  app.decorateRequest('peerIdentity', null);
  app.addHook('onRequest', async (request, reply) => {
    const header = request.headers.authorization;
    if (header === undefined) {
      if (isLoopback(request.ip)) return;
      refuse(
        reply,
        CredentialFailure.Missing,
        `calls from ${request.ip} need a credential: only Ferry agents that hold a key ` +
          'this host was given (ferry host add) may call this API from another address; ' +
          'run ferry commands on this host, or add the calling host here with the same key file',
      );
    }
    const check = verifyCredential(header, request.method, request.url, nowMs(), options.keyFor);
    if (!check.isValid) refuse(reply, check.failure, check.message);
    request.peerIdentity = check.identity;
  });
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
