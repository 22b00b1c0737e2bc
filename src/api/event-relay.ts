import type { ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';

/**
 * Another host's Server-Sent Events stream relayed to our client byte for byte (a job that
 * runs on the source host, followed on the destination: control/remote-jobs.ts). The bytes are
 * not parsed, so nothing is added: no heartbeat of ours, which could land inside one of the
 * source's events (the source sends its own).
 *
 * Buffering is bounded by backpressure alone: `pipe` stops reading the source while our client's
 * socket pushes back, so the source's own stream (event-stream.ts) sees a slow reader and drops
 * `progress` events or ends the stream, as it would for a local one.
 *
 * The relay ends when either side ends: the source's end (or failure: the link went) ends the
 * client's response cleanly; the client leaving, or `close()`, aborts the call to the source.
 */
export const EVENT_STREAM_HEADERS = {
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  // nginx buffers responses unless told not to.
  'x-accel-buffering': 'no',
} as const;

export class EventRelay {
  private readonly raw: ServerResponse;
  private readonly upstream: AbortController;
  private readonly closeHandlers: (() => void)[] = [];
  private isClosed = false;

  /**
   * Writes the headers and starts relaying `body`. `upstream` is the controller whose signal the
   * call to the source was made with; the relay aborts it when it closes.
   */
  constructor(raw: ServerResponse, body: ReadableStream<Uint8Array>, upstream: AbortController) {
    this.raw = raw;
    this.upstream = upstream;
    raw.writeHead(200, EVENT_STREAM_HEADERS);
    const source = Readable.fromWeb(body as WebReadableStream<Uint8Array>);
    // A source cut short ends our stream cleanly: the client reads the job's state again.
    source.on('error', () => this.close());
    source.on('end', () => this.close());
    raw.on('close', () => this.close());
    source.pipe(raw, { end: false });
  }

  /** Runs `handler` once the relay ends, whoever ended it. */
  onClose(handler: () => void): void {
    if (this.isClosed) handler();
    else this.closeHandlers.push(handler);
  }

  /** Ends the client's response and the call to the source (idempotent). */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.upstream.abort();
    this.raw.end();
    for (const handler of this.closeHandlers.splice(0)) handler();
  }
}
