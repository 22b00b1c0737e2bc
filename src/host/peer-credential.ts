import { createHmac, timingSafeEqual } from 'node:crypto';
import type { PskKey } from '../nbd/psk-file.js';

/**
 * The credential one agent's API call carries to another (issue 7): proof that the caller holds
 * the pre-shared key both hosts were given, bound to one method, path and moment.
 *
 *   Authorization: Ferry-PSK identity="ferry", ts="1764400000000", sig="<64 hex>"
 *   sig = HMAC-SHA256(psk, LABEL "\n" identity "\n" METHOD "\n" path-with-query "\n" ts)
 *
 * `ts` is the caller's clock in milliseconds since the epoch; the receiver accepts it within
 * ±CREDENTIAL_WINDOW_MS of its own clock. The fixed label keeps this use of the key apart from
 * its other use, TLS-PSK on NBD connections: no MAC computed here can stand in for one there.
 *
 * What it does NOT protect, plainly: the API is plain HTTP, so anyone on the path reads every
 * request and reply; the body is not signed, so a man in the middle can change it; and a captured
 * request can be replayed, unchanged, until its timestamp leaves the window. It keeps hosts that
 * do not hold the key from calling the API; confidentiality and integrity need TLS (later).
 *
 * Pure: no clock, no I/O. The API's hook (api/auth.ts) verifies, PeerClient signs.
 */
export const CREDENTIAL_SCHEME = 'Ferry-PSK';
export const CREDENTIAL_WINDOW_MS = 300_000;
const LABEL = 'ferry-api-credential-v1';
const SIG_HEX_LENGTH = 64;

/** Identities that fit a psktool line, a quoted header parameter and a log line unescaped. */
const IDENTITY_PATTERN = /^[A-Za-z0-9._~@+-]{1,128}$/;
export const IDENTITY_HELP = '1 to 128 characters of A-Z, a-z, 0-9 and "._~@+-"';

export function isValidIdentity(identity: string): boolean {
  return IDENTITY_PATTERN.test(identity);
}

/**
 * The `Authorization` header value for `method` on `path` (starting with '/', with its query
 * string, exactly as it goes on the wire) at `nowMs`. The identity must be valid (asserted by
 * the registry when the key was added).
 */
export function signRequest(key: PskKey, method: string, path: string, nowMs: number): string {
  const tsMs = Math.floor(nowMs);
  const sig = computeSignature(key.key, key.identity, method, path, tsMs);
  return `${CREDENTIAL_SCHEME} identity="${key.identity}", ts="${tsMs}", sig="${sig}"`;
}

/** Why a credential was refused; the API sends it as `WWW-Authenticate: Ferry-PSK error="..."`. */
export const CredentialFailure = {
  /** No credential, from an address that needs one. */
  Missing: 'missing',
  /** Not a `Ferry-PSK identity=..., ts=..., sig=...` header. */
  Malformed: 'malformed',
  /** This host has no key for that identity: it has not added the caller (yet). */
  UnknownIdentity: 'unknown-identity',
  /** The identity is known but the MAC does not match: the two key files differ. */
  BadSignature: 'bad-signature',
  /** The timestamp is outside the window: the clocks differ, or it is an old request. */
  ClockSkew: 'clock-skew',
} as const;
export type CredentialFailure = (typeof CredentialFailure)[keyof typeof CredentialFailure];

export function isCredentialFailure(text: string): text is CredentialFailure {
  return (Object.values(CredentialFailure) as string[]).includes(text);
}

export type CredentialCheck =
  | { readonly isValid: true; readonly identity: string }
  | { readonly isValid: false; readonly failure: CredentialFailure; readonly message: string };

const HEADER_PATTERN = new RegExp(
  `^${CREDENTIAL_SCHEME}\\s+identity="([^"]*)",\\s*ts="(\\d{1,16})",\\s*sig="([0-9a-f]{${SIG_HEX_LENGTH}})"$`,
);

/**
 * Checks an `Authorization` header value against the request's method and path (with query, as
 * received) at `nowMs`, finding keys with `keyFor`. The MAC is compared in constant time. The
 * failures are told apart (so the caller can say which side to fix); that tells a prober which
 * identities exist, and nothing about their keys.
 */
export function verifyCredential(
  header: string,
  method: string,
  path: string,
  nowMs: number,
  keyFor: (identity: string) => Buffer | undefined,
): CredentialCheck {
  const match = HEADER_PATTERN.exec(header.trim());
  const [, identity, tsText, sig] = match ?? [];
  if (identity === undefined || tsText === undefined || sig === undefined) {
    return refuse(
      CredentialFailure.Malformed,
      `the Authorization header is not a ${CREDENTIAL_SCHEME} credential; ` +
        'only another Ferry agent (ferry host add) or a client on this host may call this API',
    );
  }
  const key = keyFor(identity);
  if (key === undefined) {
    return refuse(
      CredentialFailure.UnknownIdentity,
      `no host with the key identity ${JSON.stringify(identity)} was added here; ` +
        'add the calling host on this one with the same key file (ferry host add NAME URL --key-file FILE)',
    );
  }
  const tsMs = Number(tsText);
  const skewMs = nowMs - tsMs;
  if (Math.abs(skewMs) > CREDENTIAL_WINDOW_MS) {
    return refuse(
      CredentialFailure.ClockSkew,
      `the credential's timestamp is ${Math.round(skewMs / 1000)} s off this host's clock ` +
        `(at most ${CREDENTIAL_WINDOW_MS / 1000} s is accepted); synchronize the hosts' clocks (NTP)`,
    );
  }
  const expected = Buffer.from(computeSignature(key, identity, method, path, tsMs), 'hex');
  const given = Buffer.from(sig, 'hex');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
    return refuse(
      CredentialFailure.BadSignature,
      `the signature for key identity ${identity} does not match: the key files differ between ` +
        'the hosts; copy the same key file to both and add each host from the other with it',
    );
  }
  return { isValid: true, identity };
}

function refuse(failure: CredentialFailure, message: string): CredentialCheck {
  return { isValid: false, failure, message };
}

function computeSignature(
  key: Buffer,
  identity: string,
  method: string,
  path: string,
  tsMs: number,
): string {
  return createHmac('sha256', key)
    .update(`${LABEL}\n${identity}\n${method.toUpperCase()}\n${path}\n${tsMs}`)
    .digest('hex');
}
