import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { parseEventStream, type ServerEvent } from '../../src/cli/event-stream.js';

async function parse(chunks: readonly (string | Uint8Array)[]): Promise<ServerEvent[]> {
  const events: ServerEvent[] = [];
  async function* source(): AsyncGenerator<string | Uint8Array> {
    yield* chunks;
  }
  for await (const event of parseEventStream(source())) events.push(event);
  return events;
}

const FIXTURE =
  ': ferry event stream\n\n' +
  'event: job\ndata: {"id":"move-1"}\n\n' +
  ': heartbeat\n\n' +
  'event: progress\r\ndata: {"a":1}\r\n\r\n' +
  'data: first\rdata: second\r\r' +
  'event: state\ndata:no-space\nid: 7\nretry: 10\n\n' +
  'event: empty\n\n' +
  'event: cut\ndata: never dispatched\n';

const EXPECTED: ServerEvent[] = [
  { type: 'job', data: '{"id":"move-1"}' },
  { type: 'progress', data: '{"a":1}' },
  { type: 'message', data: 'first\nsecond' },
  { type: 'state', data: 'no-space' },
];

test('event stream: events, comments, CRLF and CR, multi-line data, unfinished event dropped', async () => {
  assert.deepEqual(await parse([FIXTURE]), EXPECTED);
});

test('event stream: the same events one byte at a time, as bytes, and in random splits', async () => {
  const bytes = new TextEncoder().encode(FIXTURE);
  assert.deepEqual(await parse([...FIXTURE]), EXPECTED);
  assert.deepEqual(await parse([...bytes].map((byte) => Uint8Array.of(byte))), EXPECTED);
  await fc.assert(
    fc.asyncProperty(
      fc.uniqueArray(fc.integer({ min: 1, max: bytes.length - 1 }), { maxLength: 20 }),
      async (cuts) => {
        const sorted = [0, ...cuts.sort((a, b) => a - b), bytes.length];
        const chunks = sorted.slice(1).map((end, i) => bytes.subarray(sorted[i], end));
        assert.deepEqual(await parse(chunks), EXPECTED);
      },
    ),
    { numRuns: 200 },
  );
});

test('event stream: a multi-byte character split across chunks survives', async () => {
  const bytes = new TextEncoder().encode('event: note\ndata: mirror · copy\n\n');
  const at = bytes.indexOf(0xc2) + 1;
  assert.deepEqual(await parse([bytes.subarray(0, at), bytes.subarray(at)]), [
    { type: 'note', data: 'mirror · copy' },
  ]);
});
