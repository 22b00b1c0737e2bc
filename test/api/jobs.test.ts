import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { createApi } from '../../src/api/app.js';
import { mappingOf } from '../../src/api/error-table.js';
import type { JobManager } from '../../src/control/job-manager.js';
import type { JobEvent, JobRecord, JobStatus } from '../../src/control/job-record.js';
import type { FakeAgent } from '../control/fake-agent.js';
import { finished } from '../control/job-waits.js';
import { type JobsApi, startJobsApi } from '../control/jobs-api.js';

const MIB = 1024 * 1024;
let api: JobsApi;
let fake: FakeAgent;
let jobs: JobManager;
let baseUrl: string;

before(async () => {
  api = await startJobsApi(6, { eventHeartbeatMs: 30 });
  ({ fake, jobs, url: baseUrl } = api);
});

after(() => api.close());

interface Reply {
  status: number;
  body: unknown;
  headers: Headers;
}

async function call(method: string, path: string, body?: unknown): Promise<Reply> {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return {
    status: response.status,
    body: text === '' ? undefined : JSON.parse(text),
    headers: response.headers,
  };
}

function assertError(reply: Reply, status: number, code: string): string {
  assert.equal(reply.status, status, JSON.stringify(reply.body));
  const error = (reply.body as { error: { code: string; message: string } }).error;
  assert.equal(error.code, code);
  return error.message;
}

/** One raw SSE frame as it came over the wire. */
interface Frame {
  readonly event: string | null;
  readonly data: string | null;
  readonly comment: string | null;
}

/**
 * Reads a text/event-stream response with fetch's streaming body, frame by frame, and checks
 * the framing itself (`event:` + one `data:` line, or a comment, then a blank line).
 */
async function* frames(response: Response): AsyncGenerator<Frame> {
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
  const decoder = new TextDecoder();
  let buffered = '';
  for await (const chunk of response.body!) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
      const lines = buffered.slice(0, end).split('\n');
      buffered = buffered.slice(end + 2);
      if (lines[0]?.startsWith(':')) {
        assert.equal(lines.length, 1);
        yield { event: null, data: null, comment: lines[0].slice(1).trim() };
        continue;
      }
      assert.equal(lines.length, 2, lines.join('\\n'));
      assert.match(lines[0] ?? '', /^event: \w+$/);
      assert.match(lines[1] ?? '', /^data: /);
      yield { event: lines[0]!.slice(7), data: lines[1]!.slice(6), comment: null };
    }
  }
  assert.equal(buffered, '', 'the stream ends on a frame boundary');
}

async function startJob(disk: string, extra: object = {}): Promise<JobRecord> {
  const reply = await call('POST', '/v1/migrations', { disk, datastore: 'fast', ...extra });
  assert.equal(reply.status, 202, JSON.stringify(reply.body));
  const job = reply.body as JobRecord;
  assert.equal(reply.headers.get('location'), `/v1/jobs/${job.id}`);
  return job;
}

test('POST /v1/migrations starts a job; GET /v1/jobs and /v1/jobs/:id show it', async () => {
  const job = await startJob('vm1', { method: 'mirror', speed: '64M', provisioning: 'thin' });
  assert.equal(job.kind, 'migrate');
  assert.deepEqual([job.disk, job.from, job.to], ['vm1', 'local', 'fast']);
  assert.equal(job.speedBytesPerSecond, 64 * MIB);
  assert.equal(fake.requests.at(-1)?.provisioning, 'thin');
  assert.ok(Array.isArray(job.events));
  const listed = await call('GET', '/v1/jobs');
  assert.equal(listed.status, 200);
  const all = (listed.body as { jobs: JobStatus[] }).jobs;
  assert.ok(all.some((j) => j.id === job.id));
  assert.equal((all[0] as Partial<JobRecord>).events, undefined, 'lists leave histories out');
  await finished(jobs, job.id);
  const shown = await call('GET', `/v1/jobs/${job.id}`);
  assert.equal(shown.status, 200);
  assert.equal((shown.body as JobRecord).state, 'succeeded');
  assertError(await call('GET', '/v1/jobs/move-404'), 404, 'ERR_JOB_NOT_FOUND');
});

test('POST /v1/migrations refuses bad input (400), unknown names (404), conflicts (409)', async () => {
  const post = (body: object) => call('POST', '/v1/migrations', body);
  assertError(await post({ disk: 'vm2' }), 400, 'ERR_BAD_REQUEST');
  assertError(
    await post({ disk: 'vm2', datastore: 'fast', method: 'teleport' }),
    400,
    'ERR_BAD_REQUEST',
  );
  assertError(await post({ disk: 'vm2', datastore: 'fast', sped: 1 }), 400, 'ERR_BAD_REQUEST');
  assertError(await post({ disk: 'vm2', datastore: 'fast', speed: -1 }), 400, 'ERR_BAD_REQUEST');
  const badSpeed = assertError(
    await post({ disk: 'vm2', datastore: 'fast', speed: 'fast' }),
    400,
    'ERR_BAD_SIZE',
  );
  assert.match(badSpeed, /not a speed/);
  assertError(await post({ disk: 'nope', datastore: 'fast' }), 404, 'ERR_NOT_FOUND');
  assertError(await post({ disk: 'vm2', datastore: 'nope' }), 404, 'ERR_NOT_FOUND');
  assertError(await post({ disk: 'vm2', datastore: 'local' }), 409, 'ERR_SAME_DATASTORE');
  fake.next = { isGated: true };
  const job = await startJob('vm2');
  assertError(await post({ disk: 'vm2', datastore: 'fast' }), 409, 'ERR_DISK_BUSY');
  fake.gates.at(-1)!.open();
  await finished(jobs, job.id);
});

test('POST /v1/jobs/:id/speed and /cancel, and 409 with what the state allows', async () => {
  fake.next = { isGated: true };
  const job = await startJob('vm3');
  const speeds: [string | number, number][] = [
    ['2M', 2 * MIB],
    ['512K/s', 512 * 1024],
    [0, 0],
    [MIB, MIB],
  ];
  for (const [speed, bytes] of speeds) {
    const reply = await call('POST', `/v1/jobs/${job.id}/speed`, { speed });
    assert.equal(reply.status, 200, JSON.stringify(reply.body));
    assert.equal((reply.body as JobRecord).speedBytesPerSecond, bytes);
  }
  assert.deepEqual(fake.migrations.at(-1)?.speeds, [2 * MIB, 512 * 1024, 0, MIB]);
  assertError(await call('POST', `/v1/jobs/${job.id}/speed`, { speed: 'x' }), 400, 'ERR_BAD_SIZE');
  assertError(await call('POST', `/v1/jobs/${job.id}/speed`, {}), 400, 'ERR_BAD_REQUEST');
  assertError(
    await call('POST', '/v1/jobs/move-404/speed', { speed: 1 }),
    404,
    'ERR_JOB_NOT_FOUND',
  );
  await fake.gates.at(-1)!.reached;
  const cancelled = await call('POST', `/v1/jobs/${job.id}/cancel`, {});
  assert.equal(cancelled.status, 202);
  assert.equal((cancelled.body as JobRecord).state, 'cancelling');
  const again = assertError(
    await call('POST', `/v1/jobs/${job.id}/cancel`, {}),
    409,
    'ERR_JOB_STATE',
  );
  assert.match(again, /state cancelling.*allowed only while queued or running/);
  fake.gates.at(-1)!.open();
  assert.equal((await finished(jobs, job.id)).state, 'cancelled');
  const late = assertError(
    await call('POST', `/v1/jobs/${job.id}/speed`, { speed: 1 }),
    409,
    'ERR_JOB_STATE',
  );
  assert.match(late, /was cancelled/);
});

test('GET /v1/jobs/:id/events: the record, then live events, then the end', async () => {
  fake.next = { isGated: true };
  const job = await startJob('vm4');
  const response = await fetch(`${baseUrl}/v1/jobs/${job.id}/events`);
  const types: string[] = [];
  let first: JobRecord | undefined;
  let last: JobEvent | undefined;
  let isOpened = false;
  for await (const frame of frames(response)) {
    if (frame.comment !== null) continue;
    const data = JSON.parse(frame.data!) as JobEvent & JobRecord;
    if (first === undefined) {
      assert.equal(frame.event, 'job');
      first = data;
      continue;
    }
    types.push(frame.event!);
    last = data;
    // Let the copy go once progress has been seen on the stream.
    if (frame.event === 'progress' && !isOpened) {
      assert.equal(data.job.state, 'running');
      isOpened = true;
      fake.gates.at(-1)!.open();
    }
  }
  assert.equal(first?.id, job.id);
  assert.ok(Array.isArray(first?.events), 'the first event is the whole record');
  assert.ok(types.includes('progress') && types.includes('switchover'), types.join(' '));
  assert.equal(last?.type, 'state');
  assert.equal(last?.job.state, 'succeeded');
  assert.equal(jobs.listenerCount, 0, 'the stream unsubscribed when it ended');

  // A finished job: its record, and the stream ends at once.
  const replay: Frame[] = [];
  for await (const frame of frames(await fetch(`${baseUrl}/v1/jobs/${job.id}/events`))) {
    if (frame.comment === null) replay.push(frame);
  }
  assert.deepEqual(
    replay.map((f) => f.event),
    ['job'],
  );
  assertError(await call('GET', '/v1/jobs/move-404/events'), 404, 'ERR_JOB_NOT_FOUND');
});

test('GET /v1/events: every job, heartbeats, and unsubscribes when the client leaves', async () => {
  const abort = new AbortController();
  const response = await fetch(`${baseUrl}/v1/events`, { signal: abort.signal });
  const started: string[] = [];
  let heartbeats = 0;
  const ended = new Set<string>();
  const reading = (async () => {
    for await (const frame of frames(response)) {
      if (frame.comment === 'heartbeat') heartbeats += 1;
      if (frame.event === 'state') {
        const event = JSON.parse(frame.data!) as JobEvent;
        if (event.job.state === 'succeeded') ended.add(event.job.id);
      }
      if (ended.size === 2 && heartbeats > 0) return;
    }
  })();
  // The server subscribes before it sends the headers fetch has waited for.
  assert.equal(jobs.listenerCount, 1);
  for (const disk of ['vm5', 'vm6']) started.push((await startJob(disk)).id);
  await reading;
  assert.deepEqual([...ended].sort(), started.sort());
  abort.abort();
  while (jobs.listenerCount > 0) await new Promise((resolve) => setImmediate(resolve));
});

test('closing the API ends open event streams instead of waiting for their clients', async () => {
  const own = createApi({ agent: api.agent, nbdUrl: 'nbd://127.0.0.1:10809', jobs });
  await own.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(own.server.address() as AddressInfo).port}/v1/events`;
  const response = await fetch(url);
  const comments: string[] = [];
  const reading = (async () => {
    for await (const frame of frames(response)) if (frame.comment) comments.push(frame.comment);
  })();
  assert.equal(jobs.listenerCount, 1);
  await own.close();
  await reading;
  assert.deepEqual(comments, ['ferry event stream']);
  assert.equal(jobs.listenerCount, 0);
});

test('error table: job and migration codes', () => {
  const expected: [string, number, number][] = [
    ['ERR_JOB_NOT_FOUND', 404, 1],
    ['ERR_JOB_STATE', 409, 1],
    ['ERR_SAME_DATASTORE', 409, 1],
    ['ERR_DISK_BUSY', 409, 1],
    ['ERR_CANCELLED', 409, 1],
    ['ERR_TARGET_FAILED', 502, 1],
    ['ERR_SOURCE_FAILED', 502, 1],
  ];
  for (const [code, httpStatus, exitCode] of expected) {
    assert.deepEqual(mappingOf(code), { httpStatus, exitCode }, code);
  }
});
