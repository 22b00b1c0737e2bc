import type { ServerResponse } from 'node:http';
import { EVENT_STREAM_HEADERS } from './event-relay.js';

/**
 * One Server-Sent Events response (WHATWG HTML, "Server-sent events"): each event is
 * `event: <type>\ndata: <json>\n\n`, and a comment line (`: heartbeat`) every `heartbeatMs`
 * keeps proxies and NATs from closing an idle stream.
 *
 * A client that does not read is not allowed to grow our memory: events that would push the
 * socket's buffer past `BUFFER_MAX_BYTES` end the stream instead (the client reconnects and
 * reads the current state); `progress` events, which the next one supersedes, are dropped as
 * soon as the socket pushes back.
 */
const BUFFER_MAX_BYTES = 1024 * 1024;

export class EventStream {
  private readonly raw: ServerResponse;
  private readonly heartbeat: NodeJS.Timeout;
  private readonly closeHandlers: (() => void)[] = [];
  private isClosed = false;

  /** Writes the headers at once, so the client sees the stream open before the first event. */
  constructor(raw: ServerResponse, heartbeatMs: number) {
    this.raw = raw;
    raw.writeHead(200, EVENT_STREAM_HEADERS);
    raw.write(': ferry event stream\n\n');
    this.heartbeat = setInterval(() => this.write(': heartbeat\n\n'), heartbeatMs);
    raw.on('close', () => this.close());
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** Runs `handler` once the stream ends, whoever ended it. */
  onClose(handler: () => void): void {
    if (this.isClosed) handler();
    else this.closeHandlers.push(handler);
  }

  /** Sends one event; `isDroppable` events are skipped while the client is behind. */
  send(type: string, data: unknown, isDroppable = false): void {
    if (this.isClosed) return;
    if (isDroppable && this.raw.writableNeedDrain) return;
    // JSON.stringify never emits a raw newline, so `data` is always one line.
    this.write(`event: ${type}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /** Ends the response (idempotent). */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    clearInterval(this.heartbeat);
    this.raw.end();
    for (const handler of this.closeHandlers.splice(0)) handler();
  }

  private write(text: string): void {
    if (this.isClosed) return;
    if (this.raw.writableLength + text.length > BUFFER_MAX_BYTES) {
      this.close();
      return;
    }
    this.raw.write(text);
  }
}
