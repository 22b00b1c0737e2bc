import { isIP, type Socket } from 'node:net';
import {
  connect as connectTls,
  createSecureContext,
  DEFAULT_CIPHERS,
  type SecureContext,
  TLSSocket,
} from 'node:tls';
import { errorMessageOf } from '../util/errors.js';
import { NbdProtocolError } from './errors.js';
import type { PskKey } from './psk-file.js';

/**
 * NBD over TLS (proto.md, "TLS support"): the configuration types and the glue to Node's `tls`.
 * The protocol side (when STARTTLS is allowed, what ERR_TLS_REQD means) is in handshake.ts and
 * client.ts; this file only turns a plain socket that has just exchanged NBD_OPT_STARTTLS /
 * NBD_REP_ACK into a TLS socket, with TLS-PSK (the psktool keys QEMU's `tls-creds-psk` and
 * libnbd's `tls-psk-file` use) or X.509 (QEMU's `tls-creds-x509` layout).
 *
 * Choices, each checked against GnuTLS clients (gnutls-cli, qemu-img, nbdinfo) on Node 20's
 * OpenSSL 3.0:
 * - TLS 1.3 is allowed: OpenSSL runs the classic PSK callbacks under TLS 1.3 too (as an
 *   external PSK with SHA-256), and GnuTLS's default priority ("NORMAL:+ECDHE-PSK:+DHE-PSK:+PSK",
 *   what QEMU and libnbd ask for) offers exactly that. A wrong key fails the binder check.
 * - TLS 1.2 PSK suites must be named: Node's default list ends in `!PSK`, and a `!` in an
 *   OpenSSL list removes a suite for good, so we drop that one term and put the PSK suites we
 *   want first, forward-secret ECDHE-PSK before plain PSK. A GnuTLS client capped at 1.2 then
 *   agrees on ECDHE-PSK.
 * - No PSK identity hint: TLS 1.3 has none, and QEMU and libnbd ignore it under 1.2.
 * - The minimum stays Node's default, TLS 1.2, which the spec says every implementation MUST
 *   support ("TLS versions").
 */

/** `require` is the spec's FORCEDTLS; `allow` is SELECTIVETLS (the export provider decides). */
export type NbdTlsMode = 'allow' | 'require';

export interface NbdServerX509 {
  /** PEM certificate chain and private key the server presents. */
  readonly cert: Buffer;
  readonly key: Buffer;
  /** PEM CA certificates client certificates must chain to. */
  readonly ca?: Buffer;
  /** Ask for a client certificate and refuse the handshake without a valid one. */
  readonly verifyClient: boolean;
}

export interface NbdServerTls {
  readonly mode: NbdTlsMode;
  /**
   * The key of a TLS-PSK identity, or undefined for an unknown one. Asked during each handshake,
   * never cached, so keys added while the server runs (the agent adding a peer host) count at once.
   */
  readonly pskKeyFor?: (identity: string) => Buffer | undefined;
  readonly x509?: NbdServerX509;
}

export interface NbdClientX509 {
  /** PEM CA certificates the server's certificate must chain to. */
  readonly ca: Buffer;
  /** A client certificate and key, for servers that verify clients. */
  readonly cert?: Buffer;
  readonly key?: Buffer;
}

export interface NbdClientTls {
  /** Prove this identity and key (TLS-PSK); no certificate is involved. */
  readonly psk?: PskKey;
  readonly x509?: NbdClientX509;
  /** The name the server's certificate must carry; default the host connected to. */
  readonly serverName?: string;
}

/** TLS 1.2 PSK suites we offer, strongest first; TLS 1.3 suites need no naming. */
const PSK_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
  'PSK-CHACHA20-POLY1305',
];

/** Node's default list with the PSK suites let back in (see the comment on top). */
const CIPHERS_WITH_PSK = [
  ...PSK_CIPHERS,
  ...DEFAULT_CIPHERS.split(':').filter((term) => term !== '!PSK'),
].join(':');

/** What a server's upgrades share, built once per server (the secure context is not cheap). */
export interface ServerTlsContext {
  readonly config: NbdServerTls;
  readonly secureContext: SecureContext;
}

export function createServerTlsContext(config: NbdServerTls): ServerTlsContext {
  const { x509 } = config;
  const secureContext = createSecureContext({
    ciphers: config.pskKeyFor === undefined ? DEFAULT_CIPHERS : CIPHERS_WITH_PSK,
    ...(x509 === undefined ? {} : { cert: x509.cert, key: x509.key }),
    ...(x509?.ca === undefined ? {} : { ca: x509.ca }),
  });
  return { config, secureContext };
}

/** What a finished server-side handshake proved. */
export interface TlsPeer {
  /** The TLS-PSK identity whose key the client proved; null when it used a certificate. */
  readonly pskIdentity: string | null;
}

/**
 * Wraps `socket` (plain, just after our NBD_REP_ACK to STARTTLS, paused, with no listener of
 * ours left on it) in a server TLS socket. Bytes the plain socket still holds are fed to TLS by
 * Node, so nothing the client sent is dropped. `onSecure` runs once the handshake succeeds;
 * `onFailure` once if it fails (wrong key, bad certificate, not TLS at all), after which the
 * caller closes the connection. The returned socket is the one to read and write from then on.
 */
export function upgradeServerSocket(
  socket: Socket,
  context: ServerTlsContext,
  onSecure: (peer: TlsPeer) => void,
  onFailure: (error: Error) => void,
): TLSSocket {
  const { config, secureContext } = context;
  const verifyClient = config.x509?.verifyClient ?? false;
  // The identity the client named; proven only once the handshake completes (the PSK binder,
  // or the TLS 1.2 Finished messages, check the key).
  let offeredIdentity: string | null = null;
  const pskKeyFor = config.pskKeyFor;
  const tlsSocket = new TLSSocket(socket, {
    isServer: true,
    secureContext,
    requestCert: verifyClient,
    rejectUnauthorized: verifyClient,
    ...(pskKeyFor === undefined
      ? {}
      : {
          pskCallback: (_socket: TLSSocket, identity: string): Buffer | null => {
            const key = pskKeyFor(identity) ?? null;
            offeredIdentity = key === null ? null : identity;
            return key;
          },
        }),
  });
  let isSettled = false;
  tlsSocket.once('secure', () => {
    isSettled = true;
    onSecure({ pskIdentity: offeredIdentity });
  });
  tlsSocket.on('error', (error: Error) => {
    if (isSettled) return;
    isSettled = true;
    onFailure(error);
  });
  return tlsSocket;
}

/**
 * Runs the client side of the TLS handshake on `socket` (plain, right after the server's
 * NBD_REP_ACK to our STARTTLS). Resolves with the TLS socket once it is secure. Rejects with
 * `ERR_NBD_TLS_HANDSHAKE` naming the cause (a wrong key, an untrusted certificate), having
 * destroyed the socket: the spec allows no way back to plain text ("Client-side requirements").
 */
export function startClientTls(
  socket: Socket,
  tls: NbdClientTls,
  host: string | undefined,
): Promise<TLSSocket> {
  const psk = tls.psk;
  const serverName = tls.serverName ?? host ?? 'localhost';
  return new Promise((resolve, reject) => {
    const tlsSocket = connectTls({
      socket,
      ciphers: psk === undefined ? DEFAULT_CIPHERS : CIPHERS_WITH_PSK,
      // SNI may not carry an IP address (RFC 6066); the certificate check still uses `host`.
      host: serverName,
      ...(isIP(serverName) === 0 ? { servername: serverName } : {}),
      ...(tls.x509 === undefined
        ? {}
        : {
            ca: tls.x509.ca,
            ...(tls.x509.cert === undefined ? {} : { cert: tls.x509.cert }),
            ...(tls.x509.key === undefined ? {} : { key: tls.x509.key }),
          }),
      ...(psk === undefined
        ? {}
        : { pskCallback: () => ({ psk: psk.key, identity: psk.identity }) }),
    });
    const onError = (error: Error): void => {
      tlsSocket.destroy();
      reject(
        new NbdProtocolError(
          'ERR_NBD_TLS_HANDSHAKE',
          `TLS handshake with the NBD server failed: ${errorMessageOf(error)}` +
            (psk === undefined
              ? ''
              : ` (is the key of identity "${psk.identity}" the one the server has?)`),
          { cause: error },
        ),
      );
    };
    tlsSocket.once('error', onError);
    tlsSocket.once('secureConnect', () => {
      tlsSocket.off('error', onError);
      resolve(tlsSocket);
    });
  });
}
