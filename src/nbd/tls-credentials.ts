import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FerryError } from '../util/errors.js';
import { readPskFile } from './psk-file.js';
import type { NbdServerTls, NbdTlsMode } from './tls.js';

/**
 * The server's TLS configuration from what the user typed: `--tls psk:FILE` (a psktool key file)
 * or `--tls x509:DIR` (QEMU's `tls-creds-x509` layout: `ca-cert.pem`, `server-cert.pem`,
 * `server-key.pem`), and `--tls-mode`. Keys the agent learns later (peer hosts) come through
 * `extraPskKeyFor`, so the server always speaks TLS-PSK for them: without `--tls` it runs in
 * `allow` mode (SELECTIVETLS) and plain clients go on as before.
 */
export class TlsConfigError extends FerryError<'ERR_TLS_CONFIG'> {
  override readonly name = 'TlsConfigError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_TLS_CONFIG', message, options);
  }
}

export type TlsSpec =
  | { readonly kind: 'psk'; readonly path: string }
  | { readonly kind: 'x509'; readonly dir: string };

/** `psk:FILE` or `x509:DIR`; throws `ERR_TLS_CONFIG` naming both forms otherwise. */
export function parseTlsSpec(text: string): TlsSpec {
  const colon = text.indexOf(':');
  const kind = text.slice(0, colon);
  const where = text.slice(colon + 1);
  if (colon > 0 && where !== '' && kind === 'psk') return { kind, path: where };
  if (colon > 0 && where !== '' && kind === 'x509') return { kind, dir: where };
  throw new TlsConfigError(`--tls ${text}: expected psk:FILE (psktool keys) or x509:DIR`);
}

export interface ServerTlsChoice {
  readonly tls: NbdServerTls;
  /** For the "ready" log line: `require`, `allow`, or `off` (TLS only for the agent's own keys). */
  readonly label: NbdTlsMode | 'off';
}

/**
 * Loads the user's credentials (none when `spec` is undefined) and combines them with the
 * caller's keys. The user's keys are asked first, then `extraPskKeyFor`. `mode` defaults to
 * `require` when the user gave `--tls`, and is `allow` otherwise. Throws `ERR_PSK_FILE` for a bad
 * key file and `ERR_TLS_CONFIG` for a missing certificate file or a mode without credentials.
 */
export async function loadServerTls(
  spec: TlsSpec | undefined,
  mode: NbdTlsMode | undefined,
  extraPskKeyFor: (identity: string) => Buffer | undefined,
): Promise<ServerTlsChoice> {
  if (spec === undefined) {
    if (mode === 'require') {
      throw new TlsConfigError('--tls-mode require needs --tls psk:FILE or --tls x509:DIR');
    }
    return { tls: { mode: 'allow', pskKeyFor: extraPskKeyFor }, label: 'off' };
  }
  const chosen = mode ?? 'require';
  if (spec.kind === 'psk') {
    const keys = new Map((await readPskFile(spec.path)).map((key) => [key.identity, key.key]));
    const pskKeyFor = (identity: string): Buffer | undefined =>
      keys.get(identity) ?? extraPskKeyFor(identity);
    return { tls: { mode: chosen, pskKeyFor }, label: chosen };
  }
  const file = async (name: string): Promise<Buffer> => {
    const path = join(spec.dir, name);
    try {
      return await readFile(path);
    } catch (error) {
      throw new TlsConfigError(
        `cannot read ${path} (x509:DIR holds ca-cert.pem, server-cert.pem, server-key.pem)`,
        {
          cause: error,
        },
      );
    }
  };
  const x509 = {
    cert: await file('server-cert.pem'),
    key: await file('server-key.pem'),
    ca: await file('ca-cert.pem'),
    // As QEMU's tls-creds-x509 with verify-peer on (its default): clients show a certificate
    // signed by ca-cert.pem.
    verifyClient: true,
  };
  return { tls: { mode: chosen, pskKeyFor: extraPskKeyFor, x509 }, label: chosen };
}
