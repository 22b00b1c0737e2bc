import { readFile } from 'node:fs/promises';
import { FerryError } from '../util/errors.js';

/**
 * Pre-shared keys in the `psktool` format that QEMU's `tls-creds-psk` (`keys.psk` in its `dir`)
 * and libnbd's `tls-psk-file` read: one `IDENTITY:HEXKEY` per line. Ferry uses the same file for
 * NBD over TLS-PSK and, between agents, to derive the credential its API calls carry (DESIGN.md,
 * "Cross-host").
 */
export interface PskKey {
  readonly identity: string;
  readonly key: Buffer;
}

export class PskFileError extends FerryError<'ERR_PSK_FILE'> {
  override readonly name = 'PskFileError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_PSK_FILE', message, options);
  }
}

/** psktool writes 32-byte keys; TLS-PSK needs at least a few bytes, and GnuTLS caps at 64 KiB. */
const KEY_BYTES_MIN = 16;
const KEY_BYTES_MAX = 512;

/**
 * Parses the text of a PSK file; `where` names it in errors. Blank lines and `#` comments are
 * skipped. Throws `ERR_PSK_FILE` for a malformed line, a short key, a repeated identity, or a
 * file with no key at all, saying how to make a good one.
 */
export function parsePskFile(text: string, where: string): PskKey[] {
  const keys: PskKey[] = [];
  const seen = new Set<string>();
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) continue;
    const at = `${where} line ${index + 1}`;
    const colon = line.lastIndexOf(':');
    const identity = line.slice(0, Math.max(colon, 0));
    const hex = line.slice(colon + 1);
    if (colon <= 0 || !/^[0-9a-fA-F]+$/.test(hex) || hex.length % 2 !== 0) {
      throw new PskFileError(
        `${at} is not IDENTITY:HEXKEY; make a key file with: psktool -u ferry -p FILE`,
      );
    }
    const key = Buffer.from(hex, 'hex');
    if (key.length < KEY_BYTES_MIN || key.length > KEY_BYTES_MAX) {
      throw new PskFileError(
        `${at}: the key is ${key.length} bytes; use ${KEY_BYTES_MIN} to ${KEY_BYTES_MAX} (psktool makes 32)`,
      );
    }
    if (seen.has(identity)) throw new PskFileError(`${at}: identity ${identity} is repeated`);
    seen.add(identity);
    keys.push({ identity, key });
  }
  if (keys.length === 0) {
    throw new PskFileError(`${where} holds no key; make one with: psktool -u ferry -p ${where}`);
  }
  return keys;
}

/** Reads and parses a PSK file; a missing or unreadable file is `ERR_PSK_FILE` too. */
export async function readPskFile(path: string): Promise<PskKey[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new PskFileError(`cannot read the key file ${path}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  return parsePskFile(text, path);
}

/** One `IDENTITY:HEXKEY` line, as a key file holds it. */
export function formatPskLine(key: PskKey): string {
  return `${key.identity}:${key.key.toString('hex')}`;
}
