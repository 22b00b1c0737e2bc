import { FerryError } from '../util/errors.js';

/**
 * Reads a `text/event-stream` body (WHATWG HTML, "Server-sent events", "Interpreting an event
 * stream"): lines end in LF, CRLF or CR; `event:` names the event, each `data:` adds a line to
 * its data, a blank line dispatches it, and lines starting with `:` are comments (heartbeats).
 * Fields other than `event` and `data` (`id`, `retry`) are ignored: the CLI does not reconnect.
 * A line may span chunks, and a chunk may end between CR and LF.
 */
export interface ServerEvent {
  /** `message` when the event named none, as the spec says. */
  readonly type: string;
  readonly data: string;
}

/** Longest line accepted: a job record is a few KiB; this is a bound, not a size. */
const LINE_MAX_CHARS = 1024 * 1024;

export async function* parseEventStream(
  chunks: AsyncIterable<Uint8Array | string>,
): AsyncGenerator<ServerEvent> {
  const decoder = new TextDecoder();
  let pending = '';
  let type = '';
  let data: string[] = [];
  let isAfterCr = false;
  for await (const chunk of chunks) {
    let text = typeof chunk === 'string' ? chunk : decoder.decode(chunk, { stream: true });
    // A CR that ended the previous chunk already ended its line: skip the LF of its CRLF.
    if (isAfterCr && text.startsWith('\n')) text = text.slice(1);
    pending += text;
    const lines = pending.split(/\r\n|\r|\n/);
    pending = lines.pop() ?? '';
    isAfterCr = text.endsWith('\r') && pending === '';
    if (pending.length > LINE_MAX_CHARS) {
      throw new FerryError(
        'ERR_BAD_REPLY',
        `the event stream sent a line longer than ${LINE_MAX_CHARS} characters`,
      );
    }
    for (const line of lines) {
      if (line === '') {
        if (data.length > 0) yield { type: type || 'message', data: data.join('\n') };
        type = '';
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
  }
  // An event not followed by a blank line is incomplete and, as the spec says, dropped.
}
