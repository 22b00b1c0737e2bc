import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { HostError, HostErrorCode } from '../host/errors.js';
import { isValidName, NAME_HELP } from '../host/names.js';
import { type Database, ensureSchema } from './database.js';

/**
 * API tokens (issue 10, "Polish"): what a caller from another address than loopback shows to
 * use the API (api/auth.ts), made and removed with `ferry token create|list|rm` on this host.
 *
 * A token is 32 random bytes, shown once at creation as `ferry_<base64url>`; the store keeps
 * only its SHA-256. A slow password hash would buy nothing: the token has 256 bits of entropy,
 * so a stolen database cannot be brute-forced back to tokens, and a fast hash keeps the check on
 * every request cheap. Lookup is by hash, then compared in constant time.
 */
export interface TokenInfo {
  readonly name: string;
  readonly createdAt: string;
  /** When the token last admitted a request; null if never (updated at most once a minute). */
  readonly lastUsedAt: string | null;
}

export interface CreatedToken extends TokenInfo {
  /** The secret itself: shown once, never stored. */
  readonly token: string;
}

const TOKEN_PREFIX = 'ferry_';
const TOKEN_BYTES = 32;
/** Writing "last used" on every request would make each GET a database write. */
const LAST_USED_RESOLUTION_MS = 60_000;

interface TokenRow {
  name: string;
  hash: Buffer;
  created_at: string;
  last_used_at: string | null;
}

function hashOf(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}

export class TokenStore {
  private readonly db: Database;

  constructor(db: Database) {
    this.db = db;
    ensureSchema(db, 'tokens', [
      {
        version: 1,
        sql:
          'CREATE TABLE tokens (name TEXT PRIMARY KEY, hash BLOB NOT NULL UNIQUE, ' +
          'created_at TEXT NOT NULL, last_used_at TEXT)',
      },
    ]);
  }

  /** Makes token `name`; `ERR_BAD_NAME` for a bad name, `ERR_EXISTS` if the name is taken. */
  create(name: string): CreatedToken {
    if (!isValidName(name)) {
      throw new HostError(
        HostErrorCode.BadName,
        `${JSON.stringify(name)} is not a valid token name: use ${NAME_HELP}`,
      );
    }
    const token = TOKEN_PREFIX + randomBytes(TOKEN_BYTES).toString('base64url');
    const createdAt = new Date().toISOString();
    const result = this.db
      .prepare(
        'INSERT INTO tokens (name, hash, created_at) VALUES (?, ?, ?) ON CONFLICT(name) DO NOTHING',
      )
      .run(name, hashOf(token), createdAt);
    if (result.changes === 0) {
      throw new HostError(
        HostErrorCode.Exists,
        `a token named ${name} exists; remove it first (ferry token rm ${name}) or pick another name`,
      );
    }
    return { name, token, createdAt, lastUsedAt: null };
  }

  list(): TokenInfo[] {
    const rows = this.db
      .prepare('SELECT name, created_at, last_used_at FROM tokens ORDER BY name')
      .all() as TokenRow[];
    return rows.map((row) => ({
      name: row.name,
      createdAt: row.created_at,
      lastUsedAt: row.last_used_at,
    }));
  }

  /** Removes token `name` at once: its next request is refused. `ERR_NOT_FOUND` if unknown. */
  remove(name: string): void {
    const result = this.db.prepare('DELETE FROM tokens WHERE name = ?').run(name);
    if (result.changes === 0) {
      throw new HostError(
        HostErrorCode.NotFound,
        `no token named ${name}; ferry token list shows the tokens`,
      );
    }
  }

  /** The name of the token `token` is, or undefined: the caller refuses the request. */
  verify(token: string, nowMs: number = Date.now()): string | undefined {
    if (!token.startsWith(TOKEN_PREFIX)) return undefined;
    const hash = hashOf(token);
    const row = this.db
      .prepare('SELECT name, hash, created_at, last_used_at FROM tokens WHERE hash = ?')
      .get(hash) as TokenRow | undefined;
    if (row === undefined || !timingSafeEqual(row.hash, hash)) return undefined;
    const lastUsedMs = row.last_used_at === null ? 0 : Date.parse(row.last_used_at);
    if (nowMs - lastUsedMs >= LAST_USED_RESOLUTION_MS) {
      this.db
        .prepare('UPDATE tokens SET last_used_at = ? WHERE name = ?')
        .run(new Date(nowMs).toISOString(), row.name);
    }
    return row.name;
  }
}
