import { EventEmitter } from 'node:events';
import { createConnection, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorCodeOf, errorMessageOf } from '../../util/errors.js';
import { type Logger, silentLogger } from '../../util/logger.js';
import { QemuError, QemuErrorCode, QmpError } from './qemu-errors.js';

/**
 * A client of QEMU's machine protocol (docs/interop/qmp-spec.txt) over a Unix socket.
 *
 * Contract:
 * - `connect` resolves only after the greeting was read and `qmp_capabilities` accepted, so the
 *   first `execute` is in command mode (qmp-spec 4, "Capabilities negotiation").
 * - Every command carries an `id` (qmp-spec 2.3) and several may be in flight, up to
 *   `inFlightMax`; replies are matched by id, not by order. A reply whose command already timed
 *   out is dropped (logged), never given to another command.
 * - Events are delivered in the order QEMU sent them, interleaved with replies as on the wire. An
 *   event is dispatched synchronously while its line is parsed, so a wait armed before `execute`
 *   (`waitForEvent` registers before it returns) cannot miss an event caused by that command.
 * - When the socket ends (QEMU exited, or `close()`), every pending command and event wait
 *   rejects with ERR_QMP_CLOSED, `closed` resolves and 'close' is emitted once.
 * - A line longer than `lineMaxBytes`, or one that is not JSON, is a protocol error: it ends the
 *   connection (STYLE.md, "Protocol code"), and the pending commands reject with it as cause.
 */

export interface QmpEvent {
  readonly event: string;
  readonly data: Readonly<Record<string, unknown>>;
  /** As QEMU sends it: wall-clock time at the host where QEMU runs. */
  readonly timestamp: { readonly seconds: number; readonly microseconds: number };
}

export interface QmpConnectOptions {
  /** Limit on connecting, greeting and capabilities negotiation together. */
  readonly timeoutMs?: number;
  readonly signal?: AbortSignal;
  /** Default limit of each command's wait for its reply. */
  readonly commandTimeoutMs?: number;
  readonly lineMaxBytes?: number;
  readonly inFlightMax?: number;
  readonly logger?: Logger;
}

export interface QmpExecuteOptions {
  readonly timeoutMs?: number;
}

export interface QmpWaitOptions {
  /** Only an event for which this returns true ends the wait. */
  readonly predicate?: (event: QmpEvent) => boolean;
  readonly timeoutMs?: number;
  /** Aborting rejects the wait with the signal's reason. */
  readonly signal?: AbortSignal;
}

interface QmpClientEvents {
  event: [QmpEvent];
  close: [];
}

interface Pending {
  readonly command: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

export const QMP_CONNECT_TIMEOUT_MS_DEFAULT = 10_000;
export const QMP_COMMAND_TIMEOUT_MS_DEFAULT = 30_000;
export const QMP_EVENT_TIMEOUT_MS_DEFAULT = 60_000;
/** `query-qmp-schema`, the longest reply we know, is about 200 KiB on QEMU 7.2. */
export const QMP_LINE_MAX_BYTES_DEFAULT = 4 * 1024 * 1024;
/** QEMU itself queues at most 8 commands per monitor and stops reading beyond (monitor/qmp.c). */
export const QMP_IN_FLIGHT_MAX_DEFAULT = 32;
/** Waits armed at once; bounds the listeners on one client. */
const WAITERS_MAX = 64;
/** Between connection attempts while QEMU is still creating its socket. */
const CONNECT_RETRY_MS = 25;

export class QmpClient extends EventEmitter<QmpClientEvents> {
  readonly path: string;
  /** Resolves when the connection has ended, for whatever reason; never rejects. */
  readonly closed: Promise<void>;
  private readonly socket: Socket;
  private readonly logger: Logger;
  private readonly commandTimeoutMs: number;
  private readonly lineMaxBytes: number;
  private readonly inFlightMax: number;
  private readonly pending = new Map<string, Pending>();
  private nextId = 0;
  private waiters = 0;
  /** Bytes of a line whose newline has not arrived yet. */
  private parts: Buffer[] = [];
  private partsBytes = 0;
  private greeting: { resolve: () => void; reject: (error: Error) => void } | undefined;
  private isClosedNow = false;
  /** Why the connection ended, when it was not a plain end of stream. */
  private endCause: Error | undefined;

  private constructor(socket: Socket, path: string, options: QmpConnectOptions) {
    super();
    this.socket = socket;
    this.path = path;
    this.logger = options.logger ?? silentLogger;
    this.commandTimeoutMs = options.commandTimeoutMs ?? QMP_COMMAND_TIMEOUT_MS_DEFAULT;
    this.lineMaxBytes = options.lineMaxBytes ?? QMP_LINE_MAX_BYTES_DEFAULT;
    this.inFlightMax = options.inFlightMax ?? QMP_IN_FLIGHT_MAX_DEFAULT;
    this.setMaxListeners(WAITERS_MAX + 16);
    this.closed = new Promise((resolve) => {
      socket.once('close', () => {
        this.onClose();
        resolve();
      });
    });
    socket.on('error', (error) => {
      this.endCause ??= error;
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
  }

  /**
   * Connects to QEMU's QMP socket at `path`, retrying while the socket does not exist yet or
   * nobody listens (QEMU still starting), until `timeoutMs`. Rejects with ERR_QMP_CONNECT when
   * the limit passes, or with the signal's reason when aborted.
   */
  static async connect(path: string, options: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = options.timeoutMs ?? QMP_CONNECT_TIMEOUT_MS_DEFAULT;
    const deadlineMs = performance.now() + timeoutMs;
    const socket = await openUnixSocket(path, deadlineMs, timeoutMs, options.signal);
    const client = new QmpClient(socket, path, options);
    try {
      await client.negotiate(Math.max(1, deadlineMs - performance.now()), options.signal);
    } catch (error) {
      client.socket.destroy();
      throw error;
    }
    return client;
  }

  get isClosed(): boolean {
    return this.isClosedNow;
  }

  /**
   * Runs one QMP command and resolves with its `return` value. Rejects with `QmpError` when QEMU
   * refuses it, ERR_QEMU_TIMEOUT after `timeoutMs` (the command may still run in QEMU: a late
   * reply is dropped), ERR_QMP_CLOSED when the connection ends first, ERR_QMP_BUSY when
   * `inFlightMax` commands are already pending.
   */
  execute<T = unknown>(
    command: string,
    args?: object,
    options: QmpExecuteOptions = {},
  ): Promise<T> {
    if (this.isClosedNow) return Promise.reject(this.closedError(`command ${command}`));
    if (this.pending.size >= this.inFlightMax) {
      return Promise.reject(
        new QemuError(
          QemuErrorCode.QmpBusy,
          `QMP command ${command} refused: ${this.pending.size} commands already wait for QEMU ` +
            `on ${this.path} (limit ${this.inFlightMax}); wait for some to finish`,
        ),
      );
    }
    const timeoutMs = options.timeoutMs ?? this.commandTimeoutMs;
    this.nextId += 1;
    const id = `ferry-${this.nextId}`;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(
          new QemuError(
            QemuErrorCode.Timeout,
            `QEMU did not answer QMP command ${command} within ${timeoutMs} ms on ${this.path}; ` +
              'it may be blocked (e.g. on an unresponsive NBD server): check the process',
          ),
        );
      }, timeoutMs);
      this.pending.set(id, {
        command,
        resolve: resolve as (value: unknown) => void,
        reject,
        timer,
      });
      const message =
        args === undefined ? { execute: command, id } : { execute: command, arguments: args, id };
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /** Calls `listener` for every event until the returned function is called. */
  onEvent(listener: (event: QmpEvent) => void): () => void {
    this.on('event', listener);
    return () => this.off('event', listener);
  }

  /**
   * Resolves with the first event named `name` (and accepted by `predicate`) that arrives after
   * this call. The listener is registered before this returns, so arm the wait, then `execute`
   * the command that causes the event, then await. Rejects with ERR_QEMU_TIMEOUT after
   * `timeoutMs`, ERR_QMP_CLOSED if the connection ends, the signal's reason when aborted, or
   * whatever `predicate` throws. A caller that may not await it must attach a handler.
   */
  waitForEvent(name: string, options: QmpWaitOptions = {}): Promise<QmpEvent> {
    const { predicate, signal } = options;
    const timeoutMs = options.timeoutMs ?? QMP_EVENT_TIMEOUT_MS_DEFAULT;
    if (this.isClosedNow) return Promise.reject(this.closedError(`event ${name}`));
    if (signal?.aborted) return Promise.reject(signal.reason);
    if (this.waiters >= WAITERS_MAX) {
      return Promise.reject(
        new QemuError(
          QemuErrorCode.QmpBusy,
          `too many QMP event waits on ${this.path} (limit ${WAITERS_MAX})`,
        ),
      );
    }
    this.waiters += 1;
    return new Promise<QmpEvent>((resolve, reject) => {
      const settle = (error: unknown, event?: QmpEvent): void => {
        this.waiters -= 1;
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
        signal?.removeEventListener('abort', onAbort);
        if (event !== undefined) resolve(event);
        else reject(error);
      };
      const onEvent = (event: QmpEvent): void => {
        if (event.event !== name) return;
        try {
          if (predicate !== undefined && !predicate(event)) return;
        } catch (error) {
          settle(error);
          return;
        }
        settle(undefined, event);
      };
      const onClose = (): void => settle(this.closedError(`event ${name}`));
      const onAbort = (): void => settle(signal?.reason);
      const timer = setTimeout(
        () =>
          settle(
            new QemuError(
              QemuErrorCode.Timeout,
              `QEMU sent no ${name} event within ${timeoutMs} ms on ${this.path}`,
            ),
          ),
        timeoutMs,
      );
      this.on('event', onEvent);
      this.once('close', onClose);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * Ends the connection now (QEMU keeps running and accepts the next client). Pending commands
   * reject with ERR_QMP_CLOSED. Resolves when the socket is closed.
   */
  close(): Promise<void> {
    this.endCause ??= new Error('closed by this client');
    this.socket.destroy();
    return this.closed;
  }

  private async negotiate(timeoutMs: number, signal: AbortSignal | undefined): Promise<void> {
    const greeted = new Promise<void>((resolve, reject) => {
      this.greeting = { resolve, reject };
    });
    const timer = setTimeout(() => {
      this.greeting?.reject(
        new QemuError(
          QemuErrorCode.QmpConnect,
          `QMP socket ${this.path} accepted the connection but sent no greeting within ` +
            `${timeoutMs} ms: another client may hold the monitor (QEMU serves one at a time)`,
        ),
      );
    }, timeoutMs);
    const onAbort = (): void => this.greeting?.reject(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await greeted;
      await this.execute('qmp_capabilities', undefined, { timeoutMs });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Splits the stream into lines without copying unless a line spans chunks. */
  private onData(chunk: Buffer): void {
    let start = 0;
    for (;;) {
      const newline = chunk.indexOf(0x0a, start);
      if (newline < 0) break;
      const piece = chunk.subarray(start, newline);
      const line = this.partsBytes === 0 ? piece : Buffer.concat([...this.parts, piece]);
      this.parts = [];
      this.partsBytes = 0;
      if (line.length > this.lineMaxBytes) {
        this.failProtocol(`a line of ${line.length} bytes`);
        return;
      }
      this.onLine(line.toString('utf8'));
      if (this.socket.destroyed) return;
      start = newline + 1;
    }
    if (start < chunk.length) {
      this.parts.push(chunk.subarray(start));
      this.partsBytes += chunk.length - start;
      if (this.partsBytes > this.lineMaxBytes) {
        this.failProtocol(`over ${this.lineMaxBytes} bytes without a newline`);
      }
    }
  }

  private onLine(text: string): void {
    if (text.trim() === '') return;
    let message: Record<string, unknown>;
    try {
      message = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      this.failProtocol(`a line that is not JSON (${errorMessageOf(error)})`);
      return;
    }
    if (typeof message !== 'object' || message === null) {
      this.failProtocol('a JSON value that is not an object');
    } else if ('QMP' in message) {
      this.greeting?.resolve();
      this.greeting = undefined;
    } else if (typeof message.event === 'string') {
      this.dispatchEvent(message);
    } else if ('return' in message || 'error' in message) {
      this.settleReply(message);
    } else {
      this.logger.warn(
        { path: this.path, text: text.slice(0, 200) },
        'unknown QMP message ignored',
      );
    }
  }

  private settleReply(message: Record<string, unknown>): void {
    const id = typeof message.id === 'string' ? message.id : undefined;
    const pending = id === undefined ? undefined : this.pending.get(id);
    if (id === undefined || pending === undefined) {
      // A reply to a command that timed out, or an error QEMU raised before it could read the
      // id (e.g. a malformed request): nobody waits for it any more.
      this.logger.debug({ path: this.path, id }, 'QMP reply without a waiting command dropped');
      return;
    }
    this.pending.delete(id);
    clearTimeout(pending.timer);
    const error = message.error as { class?: unknown; desc?: unknown } | undefined;
    if (error === undefined) {
      pending.resolve(message.return);
    } else {
      pending.reject(new QmpError(pending.command, String(error.class), String(error.desc)));
    }
  }

  private dispatchEvent(message: Record<string, unknown>): void {
    const timestamp = (message.timestamp ?? {
      seconds: 0,
      microseconds: 0,
    }) as QmpEvent['timestamp'];
    const data = (message.data ?? {}) as Record<string, unknown>;
    const event: QmpEvent = { event: message.event as string, data, timestamp };
    try {
      this.emit('event', event);
    } catch (error) {
      // A listener's bug must not cost the connection: log it and keep parsing.
      this.logger.error(
        { path: this.path, event: event.event, err: error },
        'QMP event listener threw',
      );
    }
  }

  private failProtocol(what: string): void {
    this.endCause = new QemuError(
      QemuErrorCode.QmpProtocol,
      `QEMU sent ${what} on QMP socket ${this.path}; closing the connection`,
    );
    this.logger.error({ path: this.path, err: this.endCause }, 'QMP protocol error');
    this.socket.destroy();
  }

  private onClose(): void {
    this.isClosedNow = true;
    this.parts = [];
    this.partsBytes = 0;
    this.greeting?.reject(this.closedError('the QMP greeting'));
    this.greeting = undefined;
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      clearTimeout(pending.timer);
      pending.reject(this.closedError(`command ${pending.command}`));
    }
    this.emit('close');
  }

  private closedError(what: string): QemuError {
    return new QemuError(
      QemuErrorCode.QmpClosed,
      `QMP connection ${this.path} closed while waiting for ${what}: QEMU exited or the ` +
        'connection was closed; see the VM serial log and QEMU process status',
      { cause: this.endCause },
    );
  }
}

/** Connects, retrying ENOENT and ECONNREFUSED (QEMU not listening yet) until the deadline. */
async function openUnixSocket(
  path: string,
  deadlineMs: number,
  timeoutMs: number,
  signal: AbortSignal | undefined,
): Promise<Socket> {
  for (;;) {
    signal?.throwIfAborted();
    try {
      return await connectOnce(path, signal);
    } catch (error) {
      const code = errorCodeOf(error);
      const isRetryable = code === 'ENOENT' || code === 'ECONNREFUSED';
      const remainingMs = deadlineMs - performance.now();
      if (!isRetryable || remainingMs <= 0) {
        if (signal?.aborted) throw signal.reason;
        throw new QemuError(
          QemuErrorCode.QmpConnect,
          `could not connect to QMP socket ${path} within ${timeoutMs} ms (${code ?? errorMessageOf(error)}): ` +
            'is QEMU running with -qmp unix:PATH,server=on?',
          { cause: error },
        );
      }
      try {
        await sleep(Math.min(CONNECT_RETRY_MS, remainingMs), undefined, signal ? { signal } : {});
      } catch (sleepError) {
        // timers/promises rejects with its own AbortError; callers expect the signal's reason.
        throw signal?.reason ?? sleepError;
      }
    }
  }
}

function connectOnce(path: string, signal: AbortSignal | undefined): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(path);
    const onAbort = (): void => {
      socket.destroy();
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('connect', () => {
      signal?.removeEventListener('abort', onAbort);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) => {
      signal?.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(error);
    });
  });
}
