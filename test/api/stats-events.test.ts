/**
 * `GET /v1/stats/events` (issue 10) in-process: the real API over a real agent, a guest's
 * writes through the disk's own stack, and the stream read frame by frame. Waits on events,
 * never on sleeps.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import type { StatsSample } from '../../src/api/routes/stats-events.js';
import { Agent } from '../../src/host/agent.js';

const MIB = 1024 * 1024;
let agent: Agent;
let app: FastifyInstance;
let baseUrl: string;
let dataDir: string;

before(async () => {
  dataDir = await mkdtemp(join(tmpdir(), 'ferry-stats-test-'));
  agent = await Agent.open({ dataDir });
  await agent.createDisk({ name: 'd1', sizeBytes: MIB });
  app = createApi({ agent, nbdUrl: 'nbd://127.0.0.1:10809' });
  await app.listen({ host: '127.0.0.1', port: 0 });
  baseUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(async () => {
  await app.close();
  await agent.close();
  await rm(dataDir, { recursive: true, force: true });
});

/** The `stats` events of a text/event-stream response, checking the framing as it goes. */
async function* samples(response: Response): AsyncGenerator<StatsSample> {
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of response.body!) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
      const lines = buffered.slice(0, end).split('\n');
      buffered = buffered.slice(end + 2);
      if (lines[0]?.startsWith(':')) continue;
      assert.equal(lines.length, 2, lines.join('\\n'));
      assert.equal(lines[0], 'event: stats');
      assert.match(lines[1] ?? '', /^data: /);
      yield JSON.parse(lines[1]!.slice(6)) as StatsSample;
    }
  }
}

/** The guest: writes through the served stack, as the NBD server does. */
function guestWrites(count: number): Promise<void> {
  const entry = agent.exports.get('d1');
  assert.ok(entry !== undefined);
  return (async () => {
    for (let index = 0; index < count; index += 1) {
      await entry.stack.top.write((index % 256) * 4096, Buffer.alloc(4096, index));
    }
  })();
}

test('every second: per-disk guest rates and per-datastore space; the stream ends with the API', async () => {
  const response = await fetch(`${baseUrl}/v1/stats/events`);
  let sawWrites = false;
  let count = 0;
  for await (const sample of samples(response)) {
    count += 1;
    assert.ok(!Number.isNaN(Date.parse(sample.time)));
    const disk = sample.disks.find((d) => d.name === 'd1');
    assert.ok(disk !== undefined, 'disk d1 is in every sample');
    assert.equal(disk.datastore, 'local');
    for (const field of ['readIops', 'writeIops', 'readBytesPerSecond', 'writeBytesPerSecond']) {
      const value = disk[field as keyof typeof disk];
      assert.ok(typeof value === 'number' && value >= 0, `${field} ${value}`);
    }
    const local = sample.datastores.find((d) => d.name === 'local');
    assert.ok(local !== undefined && local.capacityBytes !== null && local.usedBytes !== null);
    assert.ok(local.usedBytes <= local.capacityBytes);
    if (disk.writeIops > 0) {
      // 100 writes of 4 KiB fell within the interval (or two): bytes follow operations.
      assert.ok(disk.writeBytesPerSecond > 0);
      assert.ok(disk.latencyMs !== null && disk.latencyMs >= 0);
      sawWrites = true;
      break;
    }
    if (count === 1) await guestWrites(100);
  }
  assert.ok(sawWrites, 'the guest writes showed in a sample');
});

test('closing the API ends open stats streams instead of waiting for their clients', async () => {
  const own = createApi({ agent, nbdUrl: 'nbd://127.0.0.1:10809' });
  await own.listen({ host: '127.0.0.1', port: 0 });
  const port = (own.server.address() as AddressInfo).port;
  const response = await fetch(`http://127.0.0.1:${port}/v1/stats/events`);
  const reading = (async () => {
    let received = 0;
    for await (const _ of samples(response)) received += 1;
    return received;
  })();
  await own.close();
  assert.ok((await reading) >= 0, 'the stream ended');
});
