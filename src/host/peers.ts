import { chmod, mkdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { formatPskLine, type PskKey, parsePskFile } from '../nbd/psk-file.js';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { readJson, syncDirectory, writeFileAtomic, writeJsonAtomic } from './atomic-file.js';
import { HostError, HostErrorCode } from './errors.js';
import { checkName, isValidName } from './names.js';
import { IDENTITY_HELP, isValidIdentity } from './peer-credential.js';

/**
 * The other hosts this agent knows (issue 7): `<dataDir>/hosts.json` lists each peer's name, API
 * URL and key identity, replaced atomically on every change; each peer's pre-shared key is in
 * `<dataDir>/hosts/NAME.psk`, one psktool line (`IDENTITY:HEXKEY`), mode 0600 in a 0700
 * directory, so QEMU or libnbd can be pointed at the same file.
 *
 * Order of writes: the key file before the list on add, the list before the key file on remove.
 * A crash between the two leaves at most an unlisted key file, which is ignored and replaced by
 * the next add of that name; the list never names a host whose key is missing.
 *
 * Several peers may share one identity only with the same key (one key file copied to every
 * host is the common setup): `keyFor(identity)` must have a single answer, since the identity is
 * all that an incoming NBD TLS-PSK handshake or API credential says about who calls.
 */
export const PEERS_FILE = 'hosts.json';
export const PEER_KEY_DIR = 'hosts';
const PEERS_VERSION = 1;

export interface Peer {
  readonly name: string;
  /** Normalized: `http(s)://HOST:PORT`, no path, no trailing slash. */
  readonly url: string;
  readonly key: PskKey;
}

export interface AddPeerRequest {
  readonly name: string;
  readonly url: string;
  readonly key: PskKey;
}

interface PeerEntry {
  readonly name: string;
  readonly url: string;
  readonly identity: string;
}

export class PeerRegistry {
  private readonly dataDir: string;
  private peers: Peer[];
  /** Changes run one at a time, so two adds cannot both pass the checks and both write. */
  private tail: Promise<unknown> = Promise.resolve();

  private constructor(dataDir: string, peers: Peer[]) {
    this.dataDir = dataDir;
    this.peers = peers;
  }

  /**
   * Loads the peers of `dataDir` (absolute); none if it has no hosts.json. A list or key file
   * that cannot be read or fails validation throws `ERR_BAD_DESCRIPTOR` naming the file: serving
   * with a peer silently missing would turn its calls away with a misleading "unknown identity".
   */
  static async load(dataDir: string): Promise<PeerRegistry> {
    const listPath = join(dataDir, PEERS_FILE);
    let value: unknown;
    try {
      value = await readJson(listPath);
    } catch (error) {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
      return new PeerRegistry(dataDir, []);
    }
    const peers: Peer[] = [];
    for (const entry of parsePeerList(value, listPath)) {
      const key = await readPeerKey(dataDir, entry);
      const twin = peers.find((peer) => peer.key.identity === key.identity);
      if (twin && !twin.key.key.equals(key.key)) {
        throw new HostError(
          HostErrorCode.BadDescriptor,
          `hosts ${twin.name} and ${entry.name} have different keys for the identity ` +
            `${key.identity} (${join(dataDir, PEER_KEY_DIR)}); remove one of them from ${listPath}`,
        );
      }
      peers.push({ ...entry, key });
    }
    return new PeerRegistry(dataDir, peers);
  }

  list(): readonly Peer[] {
    return this.peers;
  }

  get(name: string): Peer | undefined {
    return this.peers.find((peer) => peer.name === name);
  }

  /** `get`, or `ERR_NOT_FOUND` saying where to look. */
  require(name: string): Peer {
    const peer = this.get(name);
    if (!peer) {
      throw new HostError(
        HostErrorCode.NotFound,
        `no host named ${name}; see ferry host list, or add it with ferry host add`,
      );
    }
    return peer;
  }

  /** The key of `identity`, for the NBD server's TLS-PSK handshake and the API's credential check. */
  keyFor(identity: string): Buffer | undefined {
    return this.peers.find((peer) => peer.key.identity === identity)?.key.key;
  }

  /**
   * Checks a request without changing anything; `add` repeats these checks. Throws `ERR_BAD_NAME`,
   * `ERR_BAD_URL`, `ERR_BAD_KEY`, or `ERR_EXISTS` (the name is taken, or the identity is another
   * peer's with a different key). Returns the normalized URL.
   */
  check(request: AddPeerRequest): string {
    checkName(request.name, 'host');
    const url = normalizePeerUrl(request.url);
    checkKey(request.key);
    if (this.get(request.name)) {
      throw new HostError(HostErrorCode.Exists, `host ${request.name} already exists`);
    }
    const twin = this.peers.find(
      (peer) => peer.key.identity === request.key.identity && !peer.key.key.equals(request.key.key),
    );
    if (twin) {
      throw new HostError(
        HostErrorCode.Exists,
        `host ${twin.name} already uses the key identity ${request.key.identity} with another key; ` +
          'use the same key file for both, or give this key another identity (psktool -u)',
      );
    }
    return url;
  }

  /** Adds a peer durably (see the order of writes above); throws as `check` does. */
  add(request: AddPeerRequest): Promise<Peer> {
    return this.serialize(async () => {
      const url = this.check(request);
      const peer: Peer = { name: request.name, url, key: request.key };
      const keyDir = join(this.dataDir, PEER_KEY_DIR);
      await mkdir(keyDir, { recursive: true, mode: 0o700 });
      // mkdir leaves an existing directory's mode alone, and the umask may have widened ours.
      await chmod(keyDir, 0o700);
      await writeFileAtomic(
        keyPath(this.dataDir, peer.name),
        `${formatPskLine(peer.key)}\n`,
        0o600,
      );
      await this.save([...this.peers, peer]);
      return peer;
    });
  }

  /** Forgets peer `name` and deletes its key file; `ERR_NOT_FOUND` if there is none. */
  remove(name: string): Promise<void> {
    return this.serialize(async () => {
      this.require(name);
      await this.save(this.peers.filter((peer) => peer.name !== name));
      await unlink(keyPath(this.dataDir, name)).catch((error: unknown) => {
        if (errorCodeOf(error) !== 'ENOENT') throw error;
      });
      await syncDirectory(join(this.dataDir, PEER_KEY_DIR));
    });
  }

  private async save(peers: Peer[]): Promise<void> {
    const entries: PeerEntry[] = peers.map((peer) => ({
      name: peer.name,
      url: peer.url,
      identity: peer.key.identity,
    }));
    await writeJsonAtomic(join(this.dataDir, PEERS_FILE), {
      version: PEERS_VERSION,
      hosts: entries,
    });
    this.peers = peers;
  }

  private serialize<T>(action: () => Promise<T>): Promise<T> {
    const result = this.tail.then(action, action);
    this.tail = result.catch(() => undefined);
    return result;
  }
}

/**
 * `http(s)://HOST:PORT` with nothing else, normalized (lower-case host, explicit port, no
 * trailing slash), or `ERR_BAD_URL` saying what is expected. The port must be written: the
 * scheme's default (80) is almost never where an agent listens (7480 is).
 */
export function normalizePeerUrl(text: string): string {
  const fail = (why: string): HostError =>
    new HostError(
      HostErrorCode.BadUrl,
      `${JSON.stringify(text)} is not a host URL (${why}); use http://HOST:PORT, e.g. http://hostb:7480`,
    );
  let url: URL;
  try {
    url = new URL(text.trim());
  } catch (error) {
    throw fail(errorMessageOf(error));
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw fail('http or https only');
  if (url.username !== '' || url.password !== '') throw fail('no user or password');
  if (url.pathname !== '/' || url.search !== '' || url.hash !== '') throw fail('no path or query');
  if (url.hostname === '') throw fail('no host');
  const isPortWritten = /^[a-z]+:\/\/(\[[^\]]*\]|[^/:?#]*):\d+\/?$/i.test(text.trim());
  if (!isPortWritten) throw fail('the port is missing');
  const port = url.port === '' ? (url.protocol === 'https:' ? '443' : '80') : url.port;
  return `${url.protocol}//${url.hostname}:${port}`;
}

function checkKey(key: PskKey): void {
  if (!isValidIdentity(key.identity)) {
    throw new HostError(
      HostErrorCode.BadKey,
      `${JSON.stringify(key.identity)} is not a usable key identity: use ${IDENTITY_HELP} ` +
        '(psktool -u IDENTITY)',
    );
  }
  // parsePskFile bounds the length; a key built elsewhere is held to the same rule here.
  const line = formatPskLine(key);
  try {
    parsePskFile(line, `the key of identity ${key.identity}`);
  } catch (error) {
    throw new HostError(HostErrorCode.BadKey, errorMessageOf(error), { cause: error });
  }
}

function keyPath(dataDir: string, name: string): string {
  return join(dataDir, PEER_KEY_DIR, `${name}.psk`);
}

async function readPeerKey(dataDir: string, entry: PeerEntry): Promise<PskKey> {
  const path = keyPath(dataDir, entry.name);
  const fail = (what: string, cause?: unknown): HostError =>
    new HostError(
      HostErrorCode.BadDescriptor,
      `key of host ${entry.name} (${path}): ${what}; restore it, or remove the host from ` +
        `${PEERS_FILE} and add it again`,
      cause === undefined ? {} : { cause },
    );
  let keys: PskKey[];
  try {
    keys = parsePskFile(await readFile(path, 'utf8'), path);
  } catch (error) {
    throw fail(errorMessageOf(error), error);
  }
  const key = keys.find((candidate) => candidate.identity === entry.identity);
  if (!key) throw fail(`no line for identity ${entry.identity}`);
  return key;
}

function parsePeerList(value: unknown, source: string): PeerEntry[] {
  const fail = (what: string): HostError =>
    new HostError(HostErrorCode.BadDescriptor, `host list ${source}: ${what}; fix or remove it`);
  const record = value as { version?: unknown; hosts?: unknown } | null;
  if (typeof record !== 'object' || record === null) throw fail('not a JSON object');
  if (record.version !== PEERS_VERSION) {
    throw fail(`version ${JSON.stringify(record.version)} is not ${PEERS_VERSION}`);
  }
  if (!Array.isArray(record.hosts)) throw fail('"hosts" is not a list');
  const entries: PeerEntry[] = [];
  for (const item of record.hosts as unknown[]) {
    const { name, url, identity } = (item ?? {}) as Record<string, unknown>;
    if (
      typeof name !== 'string' ||
      !isValidName(name) ||
      typeof url !== 'string' ||
      typeof identity !== 'string' ||
      !isValidIdentity(identity)
    ) {
      throw fail(`bad entry ${JSON.stringify(item)}`);
    }
    if (entries.some((entry) => entry.name === name)) throw fail(`host ${name} is listed twice`);
    let normalized: string;
    try {
      normalized = normalizePeerUrl(url);
    } catch (error) {
      throw fail(`host ${name}: ${errorMessageOf(error)}`);
    }
    entries.push({ name, url: normalized, identity });
  }
  return entries;
}
