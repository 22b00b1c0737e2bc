import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';

/**
 * A QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst) for the benchmark's QEMU
 * reference: JSON objects, one per line, over a Unix socket. The server greets, the client sends
 * `qmp_capabilities`, then each command gets exactly one `return` or `error`, in order, tagged
 * with the `id` we sent; events (`{"event": ..., "data": ...}`) come in between, at any time.
 * Every event is kept with the time it arrived, so a wait can start after the event came.
 */
export interface QmpEvent {
  readonly event: string;
  readonly data: Record<string, unknown>;
  /** Date.now() when the line arrived. */
  readonly atMs: number;
}

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

interface QmpMessage {
  QMP?: unknown;
  id?: number;
  return?: unknown;
  error?: { class: string; desc: string };
  event?: string;
  data?: Record<string, unknown>;
}

const CONNECT_RETRY_MS = 50;

export class QmpClient {
  readonly events: QmpEvent[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly waiters = new Set<() => void>();
  private nextId = 1;
  private buffered = '';
  private closedError: Error | undefined;
  private greeted = false;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.onData(text));
    socket.on('close', () => this.onClose(new Error('QMP connection closed')));
    socket.on('error', (error) => this.onClose(error));
  }

  /**
   * Connects to the monitor socket at `path` (retrying while the daemon starts), waits for the
   * greeting and leaves capabilities negotiation mode.
   */
  static async connect(path: string, timeoutMs: number): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      let client: QmpClient | undefined;
      try {
        client = new QmpClient(await openSocket(path));
        const greeting = client;
        await greeting.waitFor(() => greeting.greeted, deadline - Date.now(), 'QMP greeting');
        await client.execute('qmp_capabilities');
        return client;
      } catch (error) {
        client?.close();
        if (Date.now() >= deadline) {
          throw new Error(`no QMP monitor at ${path} within ${timeoutMs} ms`, { cause: error });
        }
        await sleep(CONNECT_RETRY_MS);
      }
    }
  }

  /** Sends `command`; resolves with its `return` value, rejects with its `error`. */
  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = this.nextId++;
    const message = { execute: command, id, ...(args === undefined ? {} : { arguments: args }) };
    return new Promise((resolve, reject) => {
      this.pending.set(id, {
        resolve,
        reject: (error) => reject(new Error(`QMP ${command}: ${error.message}`)),
      });
      this.socket.write(`${JSON.stringify(message)}\n`);
    });
  }

  /**
   * Resolves with the first event named `name` that arrived at index `fromIndex` or later of
   * `events` and satisfies `isMatch`. Rejects after `timeoutMs` or when the connection closes.
   */
  async waitEvent(
    name: string,
    isMatch: (data: Record<string, unknown>) => boolean,
    fromIndex: number,
    timeoutMs: number,
  ): Promise<QmpEvent> {
    const find = (): QmpEvent | undefined =>
      this.events.slice(fromIndex).find((e) => e.event === name && isMatch(e.data));
    await this.waitFor(() => find() !== undefined, timeoutMs, `QMP event ${name}`);
    const found = find();
    if (found === undefined) throw new Error(`QMP event ${name} vanished`);
    return found;
  }

  close(): void {
    this.socket.destroy();
  }

  private waitFor(isDone: () => boolean, timeoutMs: number, what: string): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (isDone()) finish();
        else if (this.closedError) finish(this.closedError);
      };
      const finish = (error?: Error): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        if (error) reject(error);
        else resolve();
      };
      const timer = setTimeout(
        () => finish(new Error(`no ${what} within ${timeoutMs} ms`)),
        Math.max(0, timeoutMs),
      );
      this.waiters.add(check);
      check();
    });
  }

  private onData(text: string): void {
    this.buffered += text;
    let newline = this.buffered.indexOf('\n');
    while (newline >= 0) {
      const line = this.buffered.slice(0, newline).trim();
      this.buffered = this.buffered.slice(newline + 1);
      if (line !== '') this.onMessage(JSON.parse(line) as QmpMessage);
      newline = this.buffered.indexOf('\n');
    }
    for (const check of [...this.waiters]) check();
  }

  private onMessage(message: QmpMessage): void {
    if (message.QMP !== undefined) {
      this.greeted = true;
    } else if (message.event !== undefined) {
      this.events.push({ event: message.event, data: message.data ?? {}, atMs: Date.now() });
    } else if (message.id !== undefined) {
      const pending = this.pending.get(message.id);
      this.pending.delete(message.id);
      if (message.error)
        pending?.reject(new Error(`${message.error.class}: ${message.error.desc}`));
      else pending?.resolve(message.return);
    }
  }

  private onClose(error: Error): void {
    this.closedError ??= error;
    for (const pending of this.pending.values()) pending.reject(error);
    this.pending.clear();
    for (const check of [...this.waiters]) check();
  }
}

function openSocket(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ path });
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}
