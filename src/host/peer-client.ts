import { errorMessageOf } from '../util/errors.js';
import { HostError, HostErrorCode } from './errors.js';
import { type CredentialFailure, isCredentialFailure, signRequest } from './peer-credential.js';
import type { Peer } from './peers.js';

/**
 * Calls another host's agent API as this agent (issue 7): JSON over the global `fetch`, every
 * request signed with the peer's pre-shared key (peer-credential.ts), every call bounded by a
 * timeout.
 *
 * Contract, for every method:
 * - `path` starts with '/' and may carry a query (`/v1/disks/vm1?force=1`); names in it must be
 *   encoded by the caller (`encodeURIComponent`). The credential covers method, path and query.
 * - Resolves with the peer's parsed JSON reply (undefined for 204) when it answered 2xx.
 * - Rejects only with a `PeerError` (a `HostError`), whose `code` says what to do:
 *   - `ERR_PEER_UNREACHABLE` (503): no answer: refused connection, DNS or network failure, a
 *     reply cut short, or no complete reply within the timeout. The request may or may not
 *     have been carried out by the peer: a caller that changes state must find out (ask again)
 *     before it retries or assumes either outcome.
 *   - `ERR_PEER_UNAUTHORIZED` (409): the peer refused our credential (HTTP 401). `authFailure`
 *     says why: `unknown-identity` (it has not added this host), `bad-signature` (the key files
 *     differ), `clock-skew`; the request was not carried out.
 *   - `ERR_PEER_REFUSED` (502): the peer answered with an error, or with something that is not
 *     its JSON. `remoteCode` is the peer's own code (e.g. `ERR_NOT_FOUND`, `ERR_EXISTS`) to
 *     branch on, null when the reply was not Ferry's; `remoteStatus` its HTTP status. The message
 *     names the host and quotes the peer's message.
 * - A caller's `signal` that aborts rejects with that signal's reason, not with a PeerError.
 * - A path not starting with '/' is a programmer error: it throws a TypeError before any I/O.
 * - Replies larger than REPLY_BYTES_MAX are refused (ERR_PEER_REFUSED), so a confused peer cannot
 *   fill our memory. `stream` is the exception: it hands over a body that is read as it comes,
 *   and the caller bounds what it keeps.
 *
 * Holds no state between calls besides fetch's pooled connections: safe to share and to call
 * concurrently.
 */
export const PEER_TIMEOUT_MS = 10_000;
export const REPLY_BYTES_MAX = 16 * 1024 * 1024;

export interface PeerCallOptions {
  /** Time for the whole exchange, connection to the last byte of the reply; default: the client's. */
  readonly timeoutMs?: number;
  /** Stops the call; it then rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

export interface PeerClientOptions {
  /** Default per call; PEER_TIMEOUT_MS if not given. */
  readonly timeoutMs?: number;
  /** The clock the credential's timestamp comes from (tests move it); default `Date.now`. */
  readonly nowMs?: () => number;
}

export class PeerError extends HostError {
  /** Our name for the peer. */
  readonly host: string;
  /** The peer's error code when it answered with Ferry's error JSON; null otherwise. */
  readonly remoteCode: string | null;
  /** The peer's HTTP status when it answered; null when it did not. */
  readonly remoteStatus: number | null;
  /** Why the peer refused our credential, for `ERR_PEER_UNAUTHORIZED`; null otherwise. */
  readonly authFailure: CredentialFailure | null;

  constructor(
    code: HostErrorCode,
    message: string,
    details: {
      host: string;
      remoteCode?: string | null;
      remoteStatus?: number | null;
      authFailure?: CredentialFailure | null;
      cause?: unknown;
    },
  ) {
    super(code, message, details.cause === undefined ? {} : { cause: details.cause });
    this.host = details.host;
    this.remoteCode = details.remoteCode ?? null;
    this.remoteStatus = details.remoteStatus ?? null;
    this.authFailure = details.authFailure ?? null;
  }
}

export class PeerClient {
  readonly name: string;
  readonly url: string;
  private readonly peer: Peer;
  private readonly timeoutMs: number;
  private readonly nowMs: () => number;

  constructor(peer: Peer, options: PeerClientOptions = {}) {
    this.peer = peer;
    this.name = peer.name;
    this.url = peer.url;
    this.timeoutMs = options.timeoutMs ?? PEER_TIMEOUT_MS;
    this.nowMs = options.nowMs ?? Date.now;
  }

  get<T>(path: string, options?: PeerCallOptions): Promise<T> {
    return this.request<T>('GET', path, undefined, options);
  }

  post<T>(path: string, body?: unknown, options?: PeerCallOptions): Promise<T> {
    return this.request<T>('POST', path, body, options);
  }

  async delete(path: string, options?: PeerCallOptions): Promise<void> {
    await this.request<unknown>('DELETE', path, undefined, options);
  }

  /** One signed JSON request; see the contract above. */
  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    options: PeerCallOptions = {},
  ): Promise<T> {
    const call = this.prepare(method, path, 'application/json');
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal =
      options.signal === undefined ? timeout : AbortSignal.any([timeout, options.signal]);
    if (body !== undefined) call.headers['content-type'] = 'application/json';
    try {
      const response = await fetch(call.target, {
        method,
        headers: call.headers,
        signal,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      });
      const text = await readReply(response, this.name, call.what);
      return this.parse<T>(response, text, call.what);
    } catch (error) {
      throw this.failure(error, call.what, timeout.aborted, timeoutMs, options.signal);
    }
  }

  /**
   * A signed GET of a Server-Sent Events stream (`/v1/jobs/:id/events`), for relaying it.
   * Resolves with the body, unread, once the peer answered 2xx with `text/event-stream`; the
   * timeout bounds only the wait for that answer, since a stream may rightly stay quiet for
   * long. Rejects as the contract above says (an error reply is read and parsed as `request`
   * does; any other content type is `ERR_PEER_REFUSED`). After it resolved, `signal` is the only
   * way to stop the stream early: aborting it ends the body with an error and closes the
   * connection; a caller that stops reading without aborting holds the connection open.
   */
  async stream(path: string, options: PeerCallOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const call = this.prepare('GET', path, 'text/event-stream');
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const answered = new AbortController();
    const timer = setTimeout(() => answered.abort(), timeoutMs);
    const signal =
      options.signal === undefined
        ? answered.signal
        : AbortSignal.any([answered.signal, options.signal]);
    try {
      const response = await fetch(call.target, { method: 'GET', headers: call.headers, signal });
      if (!response.ok) {
        // An error reply is the peer's JSON: `parse` throws it as the PeerError named above.
        this.parse(response, await readReply(response, this.name, call.what), call.what);
      }
      const type = response.headers.get('content-type') ?? '';
      if (!type.startsWith('text/event-stream') || response.body === null) {
        await response.body?.cancel();
        throw new PeerError(
          HostErrorCode.PeerRefused,
          `host ${this.name} at ${this.url} answered ${call.what} with ${type || 'no content type'}, ` +
            'not an event stream; is that URL a Ferry agent?',
          { host: this.name, remoteStatus: response.status },
        );
      }
      return response.body;
    } catch (error) {
      throw this.failure(error, call.what, answered.signal.aborted, timeoutMs, options.signal);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Target, signed headers and a label for messages; refuses a path without its leading '/'. */
  private prepare(method: string, path: string, accept: string) {
    if (!path.startsWith('/')) throw new TypeError(`peer API path must start with '/': ${path}`);
    // Sign what goes on the wire: fetch normalizes the path (percent-encoding) the way URL does.
    const target = new URL(path, this.url);
    const wirePath = `${target.pathname}${target.search}`;
    const headers: Record<string, string> = {
      accept,
      authorization: signRequest(this.peer.key, method, wirePath, this.nowMs()),
    };
    return { target, headers, what: `${method} ${wirePath}` };
  }

  /** What a failed call rejects with: the caller's abort reason, a PeerError as it is, or unreachable. */
  private failure(
    error: unknown,
    what: string,
    isTimedOut: boolean,
    timeoutMs: number,
    callerSignal: AbortSignal | undefined,
  ): unknown {
    if (callerSignal?.aborted) return callerSignal.reason;
    if (error instanceof PeerError) return error;
    const reason = isTimedOut
      ? `no answer within ${timeoutMs / 1000} s`
      : errorMessageOf((error as { cause?: unknown }).cause ?? error);
    return new PeerError(
      HostErrorCode.PeerUnreachable,
      `host ${this.name} at ${this.url} is unreachable (${what}: ${reason}); check that its ` +
        'ferry serve runs and listens there, and see ferry host list',
      { host: this.name, cause: error },
    );
  }

  private parse<T>(response: Response, text: string, what: string): T {
    if (response.ok && (response.status === 204 || text === '')) return undefined as T;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw new PeerError(
        HostErrorCode.PeerRefused,
        `host ${this.name} at ${this.url} answered ${what} with HTTP ${response.status} and a ` +
          'reply that is not JSON; is that URL a Ferry agent?',
        { host: this.name, remoteStatus: response.status, cause: error },
      );
    }
    if (response.ok) return value as T;
    const failure = (value as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    const remoteCode = typeof failure?.code === 'string' ? failure.code : null;
    const remoteMessage =
      typeof failure?.message === 'string' ? failure.message : `HTTP ${response.status}`;
    if (response.status === 401) throw this.unauthorized(response, remoteCode, remoteMessage);
    throw new PeerError(HostErrorCode.PeerRefused, `host ${this.name}: ${remoteMessage}`, {
      host: this.name,
      remoteCode,
      remoteStatus: response.status,
    });
  }

  private unauthorized(response: Response, remoteCode: string | null, remoteMessage: string) {
    // api/auth.ts names the failure in `WWW-Authenticate: Ferry-PSK error="..."`.
    const challenge = response.headers.get('www-authenticate') ?? '';
    const reported = /error="([^"]*)"/.exec(challenge)?.[1] ?? '';
    const authFailure = isCredentialFailure(reported) ? reported : null;
    const identity = this.peer.key.identity;
    const advice =
      authFailure === 'unknown-identity'
        ? `it has no key for the identity ${identity}: add this host there with the same key file`
        : authFailure === 'clock-skew'
          ? "the hosts' clocks differ by more than 5 minutes: synchronize them (NTP)"
          : `its key for the identity ${identity} differs from ours: the key files differ; ` +
            'copy the same key file to both hosts and add each host from the other with it';
    return new PeerError(
      HostErrorCode.PeerUnauthorized,
      `host ${this.name} at ${this.url} refused our credential: ${advice} (it said: ${remoteMessage})`,
      { host: this.name, remoteCode, remoteStatus: response.status, authFailure },
    );
  }
}

/** The reply's text, refusing more than REPLY_BYTES_MAX (by header or by count) without reading on. */
async function readReply(response: Response, host: string, what: string): Promise<string> {
  const tooLarge = (): PeerError =>
    new PeerError(
      HostErrorCode.PeerRefused,
      `host ${host} answered ${what} with more than ${REPLY_BYTES_MAX} bytes; refused`,
      { host, remoteStatus: response.status },
    );
  const declared = Number(response.headers.get('content-length') ?? '0');
  if (declared > REPLY_BYTES_MAX) {
    await response.body?.cancel();
    throw tooLarge();
  }
  if (response.body === null) return '';
  const chunks: Uint8Array[] = [];
  let totalBytes = 0;
  for await (const chunk of response.body) {
    totalBytes += chunk.byteLength;
    if (totalBytes > REPLY_BYTES_MAX) throw tooLarge();
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
