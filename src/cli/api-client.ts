import type { ErrorBody } from '../api/error-reply.js';
import { errorMessageOf, FerryError } from '../util/errors.js';
import { parseEventStream, type ServerEvent } from './event-stream.js';

/**
 * The CLI's side of the HTTP API: one JSON request per call through the global `fetch`. Every
 * failure becomes a `FerryError`: the API's own `{ error: { code, message } }` keeps its code
 * (so the exit code comes from the same table as the HTTP status), and an API that cannot be
 * reached is `ERR_API_UNREACHABLE` with a message that says how to start one.
 */
export const DEFAULT_API_URL = 'http://127.0.0.1:7480';

export const CliErrorCode = {
  ApiUnreachable: 'ERR_API_UNREACHABLE',
  /** The reply was not the API's JSON (FERRY_API points at something else?). */
  BadReply: 'ERR_BAD_REPLY',
  /** An event stream ended before what it was followed for. */
  StreamEnded: 'ERR_STREAM_ENDED',
} as const;

export class ApiClient {
  readonly baseUrl: string;
  /** An API token (`FERRY_TOKEN`), sent as `Authorization: Bearer`; needed off loopback. */
  private readonly token: string | undefined;

  constructor(baseUrl: string, token?: string) {
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = token === '' ? undefined : token;
  }

  get<T>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  post<T>(path: string, body: object): Promise<T> {
    return this.request<T>('POST', path, body);
  }

  async delete(path: string): Promise<void> {
    await this.request<undefined>('DELETE', path);
  }

  /**
   * GETs a Server-Sent Events stream and yields its events until the server ends it. Rejects
   * like `request` when it cannot start; `signal` stops it (the iteration then rejects with the
   * abort error, which the caller tells apart by `signal.aborted`).
   */
  async *stream(path: string, signal?: AbortSignal): AsyncGenerator<ServerEvent> {
    const response = await this.send('GET', path, undefined, {
      accept: 'text/event-stream',
      signal,
    });
    // An error reply is JSON: parse() throws it as the API's error.
    if (!response.ok) await this.parse(response, 'GET', path);
    const type = response.headers.get('content-type') ?? '';
    if (!response.ok || !type.startsWith('text/event-stream') || response.body === null) {
      throw new FerryError(
        CliErrorCode.BadReply,
        `GET ${this.baseUrl}${path}: HTTP ${response.status} with ${type || 'no content type'}, ` +
          'not an event stream; is FERRY_API the Ferry API?',
      );
    }
    yield* parseEventStream(response.body);
  }

  /** Resolves with the parsed reply (undefined for 204); rejects with a `FerryError`. */
  async request<T>(method: string, path: string, body?: object): Promise<T> {
    return this.parse<T>(await this.send(method, path, body), method, path);
  }

  private async send(
    method: string,
    path: string,
    body: object | undefined,
    extra: { accept?: string; signal?: AbortSignal | undefined } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = {};
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (extra.accept !== undefined) headers.accept = extra.accept;
    if (this.token !== undefined) headers.authorization = `Bearer ${this.token}`;
    try {
      return await fetch(`${this.baseUrl}${path}`, {
        method,
        headers,
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        ...(extra.signal === undefined ? {} : { signal: extra.signal }),
      });
    } catch (error) {
      if (extra.signal?.aborted) throw error;
      const cause = (error as { cause?: unknown }).cause;
      throw new FerryError(
        CliErrorCode.ApiUnreachable,
        `cannot reach the Ferry API at ${this.baseUrl} (${errorMessageOf(cause ?? error)}); ` +
          'start it with "ferry serve", or set FERRY_API to where it listens',
        { cause: error },
      );
    }
  }

  private async parse<T>(response: Response, method: string, path: string): Promise<T> {
    if (response.status === 204) return undefined as T;
    const text = await response.text();
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (error) {
      throw new FerryError(
        CliErrorCode.BadReply,
        `${method} ${this.baseUrl}${path}: HTTP ${response.status} with a reply that is not JSON; ` +
          'is FERRY_API the Ferry API?',
        { cause: error },
      );
    }
    if (!response.ok) {
      const failure = (value as Partial<ErrorBody>).error;
      throw new FerryError(
        failure?.code ?? CliErrorCode.BadReply,
        failure?.message ?? `${method} ${path}: HTTP ${response.status}`,
      );
    }
    return value as T;
  }
}
