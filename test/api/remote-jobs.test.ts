import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import type { JobEvent, JobRecord, JobStatus } from '../../src/control/job-record.js';
import type { RemoteJobRecord, UnreachableJob } from '../../src/control/remote-jobs.js';
import { runFerry } from '../cli/ferry-process.js';
import { finished, nextEvent } from '../control/job-waits.js';
import { startTwoHosts, type TestHost, type TwoHosts } from '../host/two-hosts.js';
import { prng, randomBytes } from '../migrate/harness.js';

/**
 * `ferry job` on the destination of a cross-host move (issue 7): host b receives a disk that a
 * job of host a moves, and b's job API answers for that job by asking a.
 */
const MIB = 1024 * 1024;

interface Reply<T> {
  readonly status: number;
  readonly body: T;
}

function urlOf(host: TestHost): string {
  return `http://127.0.0.1:${(host.api.server.address() as AddressInfo).port}`;
}

async function call<T>(host: TestHost, method: string, path: string, body?: unknown) {
  const response = await fetch(`${urlOf(host)}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  return { status: response.status, body: JSON.parse(text) as T } satisfies Reply<T>;
}

/** Starts a slow move of a 16 MiB disk (4 MiB of data) from a to b through a's API. */
async function startSlowMove(hosts: TwoHosts): Promise<JobRecord> {
  await hosts.a.agent.createDisk({ name: 'vm1', sizeBytes: 16 * MIB });
  const device = hosts.a.agent.exports.lookup('vm1')?.device;
  assert.ok(device);
  await device.write(MIB, randomBytes(4 * MIB, prng(3)));
  const started = await call<JobRecord>(hosts.a, 'POST', '/v1/migrations', {
    disk: 'vm1',
    host: 'b',
    speed: '256K',
  });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  return started.body;
}

/** The SSE events of a response, parsed, until the stream ends. */
async function* events(response: Response): AsyncGenerator<{ type: string; data: unknown }> {
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
  const decoder = new TextDecoder();
  let buffered = '';
  assert.ok(response.body);
  for await (const chunk of response.body) {
    buffered += decoder.decode(chunk, { stream: true });
    for (let end = buffered.indexOf('\n\n'); end >= 0; end = buffered.indexOf('\n\n')) {
      const lines = buffered.slice(0, end).split('\n');
      buffered = buffered.slice(end + 2);
      if (lines[0]?.startsWith(':')) continue;
      const type = lines[0]?.replace(/^event: /, '') ?? '';
      yield { type, data: JSON.parse(lines[1]?.replace(/^data: /, '') ?? 'null') };
    }
  }
}

async function withHosts(run: (hosts: TwoHosts) => Promise<void>): Promise<void> {
  const hosts = await startTwoHosts();
  try {
    await run(hosts);
  } finally {
    await hosts.close();
  }
}

test('remote jobs: b lists, shows, streams, re-speeds and cancels the job a runs', async () => {
  await withHosts(async (hosts) => {
    const { a, b } = hosts;
    const job = await startSlowMove(hosts);

    const listed = await call<{ jobs: (JobStatus & { runsOn?: string })[] }>(b, 'GET', '/v1/jobs');
    assert.equal(listed.status, 200);
    const entry = listed.body.jobs.find((each) => each.id === job.id);
    assert.ok(entry, JSON.stringify(listed.body));
    assert.equal(entry.runsOn, 'a');
    assert.equal(entry.disk, 'vm1');
    assert.equal(entry.to, 'b:default');

    // Some progress first, so the record shows it.
    await nextEvent(a.jobs, job.id, (event) => event.job.progress.doneBytes > 0);
    const shown = await call<RemoteJobRecord>(b, 'GET', `/v1/jobs/${job.id}`);
    assert.equal(shown.status, 200);
    assert.equal(shown.body.runsOn, 'a');
    assert.equal(shown.body.state, 'running');
    assert.equal(shown.body.progress.totalBytes >= 16 * MIB, true);
    assert.ok(shown.body.progress.doneBytes > 0);
    assert.ok(shown.body.events.length > 0);

    const missing = await call<{ error: { code: string } }>(b, 'GET', '/v1/jobs/no-such-job');
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'ERR_JOB_NOT_FOUND');

    const speed = await call<RemoteJobRecord>(b, 'POST', `/v1/jobs/${job.id}/speed`, {
      speed: '300K',
    });
    assert.equal(speed.status, 200, JSON.stringify(speed.body));
    assert.equal(speed.body.runsOn, 'a');
    assert.equal(a.jobs.get(job.id).speedBytesPerSecond, 300 * 1024);

    // The stream is a's, relayed: the record, progress, and at the end the state it ends in.
    const stream = await fetch(`${urlOf(b)}/v1/jobs/${job.id}/events`);
    const seen: string[] = [];
    let last: JobEvent | undefined;
    for await (const event of events(stream)) {
      seen.push(event.type);
      if (event.type === 'job') continue;
      last = event.data as JobEvent;
      assert.equal(last.job.id, job.id);
      if (event.type === 'progress' && !seen.includes('cancel-sent')) {
        seen.push('cancel-sent');
        const cancelled = await call<RemoteJobRecord>(b, 'POST', `/v1/jobs/${job.id}/cancel`);
        assert.equal(cancelled.status, 202, JSON.stringify(cancelled.body));
        assert.equal(cancelled.body.runsOn, 'a');
      }
    }
    assert.equal(seen[0], 'job');
    assert.ok(seen.includes('progress'), seen.join(' '));
    assert.equal(last?.type, 'state');
    assert.equal(last?.job.state, 'cancelled');
    assert.equal((await finished(a.jobs, job.id)).state, 'cancelled');

    // The receive is gone, but b still asks a about the job it saw: a watcher's last read.
    assert.deepEqual(b.agent.receiver.list(), []);
    const after = await call<RemoteJobRecord>(b, 'GET', `/v1/jobs/${job.id}`);
    assert.equal(after.status, 200);
    assert.equal(after.body.state, 'cancelled');
    assert.equal(after.body.runsOn, 'a');
    const again = await call<RemoteJobRecord>(b, 'POST', `/v1/jobs/${job.id}/cancel`);
    assert.equal(again.status, 409);
    assert.equal(b.jobs.list().length, 0);
  });
});

test('remote jobs: a source known by its key only, then unreachable; and the CLI', async () => {
  await withHosts(async (hosts) => {
    const { a, b, key } = hosts;
    const job = await startSlowMove(hosts);
    const aUrl = urlOf(a);

    // b knows a as `alpha`: found by the key identity a proved.
    await b.peers.remove('a');
    await b.peers.add({ name: 'alpha', url: aUrl, key });
    const shown = await call<RemoteJobRecord>(b, 'GET', `/v1/jobs/${job.id}`);
    assert.equal(shown.status, 200, JSON.stringify(shown.body));
    assert.equal(shown.body.runsOn, 'alpha');

    const env = { FERRY_API: urlOf(b) };
    const show = await runFerry(['job', 'show', job.id], env);
    assert.equal(show.code, 0, show.stderr);
    assert.match(show.stdout, /runs on host alpha/);
    const list = await runFerry(['job', 'list'], env);
    assert.equal(list.code, 0, list.stderr);
    assert.match(list.stdout, new RegExp(`${job.id}\\s+vm1\\s+alpha:local\\s+b:default`));

    // a's API unreachable from b: listed with what b knows, shown as unreachable.
    await b.peers.remove('alpha');
    await b.peers.add({ name: 'alpha', url: 'http://127.0.0.1:1', key });
    const listed = await call<{ jobs: UnreachableJob[] }>(b, 'GET', '/v1/jobs');
    const entry = listed.body.jobs.find((each) => each.id === job.id);
    assert.ok(entry, JSON.stringify(listed.body));
    assert.equal(entry.runsOn, 'alpha');
    assert.equal(entry.sourceHost, 'a');
    assert.equal(entry.state, 'running');
    assert.equal(entry.sizeBytes, 16 * MIB);
    assert.equal(entry.error.code, 'ERR_PEER_UNREACHABLE');
    const unreachable = await call<{ error: { code: string } }>(b, 'GET', `/v1/jobs/${job.id}`);
    assert.equal(unreachable.status, 503);
    assert.equal(unreachable.body.error.code, 'ERR_PEER_UNREACHABLE');
    const listText = await runFerry(['job', 'list'], env);
    assert.equal(listText.code, 0, listText.stderr);
    assert.match(listText.stdout, /alpha:\?/);
    assert.match(listText.stdout, /only what this host receives is known/);

    a.jobs.cancel(job.id);
    assert.equal((await finished(a.jobs, job.id)).state, 'cancelled');
  });
});
