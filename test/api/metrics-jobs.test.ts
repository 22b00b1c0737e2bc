/**
 * The job metrics of `/metrics` while a job runs and after it: jobs by state, the running job's
 * dirty bytes and copy rate, and the downtime histogram (real migrations of a fake agent's disks,
 * test/control/fake-agent.ts; a gate holds the copy so the job is seen running).
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { JobStatus } from '../../src/control/job-record.js';
import { finished } from '../control/job-waits.js';
import { startJobsApi } from '../control/jobs-api.js';
import { hasSample, sampleOf } from './prometheus-text.js';

const MIB = 1024 * 1024;

test('metrics: a running job shows its dirty bytes and rate; once done, its downtime', async () => {
  const api = await startJobsApi(1);
  after(() => api.close());
  const scrape = async (): Promise<string> => (await fetch(`${api.url}/metrics`)).text();

  api.fake.next = { isGated: true };
  const started = await fetch(`${api.url}/v1/migrations`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ disk: 'vm1', datastore: 'fast' }),
  });
  assert.equal(started.status, 202);
  const job = (await started.json()) as JobStatus;
  await api.fake.gates.at(-1)!.reached;

  const running = await scrape();
  assert.equal(sampleOf(running, 'ferry_jobs', { state: 'running' }), 1);
  assert.equal(sampleOf(running, 'ferry_jobs', { state: 'succeeded' }), 0);
  const labels = { job: job.id, disk: 'vm1' };
  const dirty = sampleOf(running, 'ferry_job_dirty_bytes', labels);
  assert.ok(dirty > 0 && dirty <= MIB, `dirty ${dirty}`);
  assert.ok(sampleOf(running, 'ferry_job_copy_rate_bytes_per_second', labels) >= 0);
  assert.equal(sampleOf(running, 'ferry_migration_downtime_seconds_count'), 0);

  api.fake.gates.at(-1)!.open();
  const record = await finished(api.jobs, job.id);
  assert.equal(record.state, 'succeeded');
  const done = await scrape();
  assert.equal(sampleOf(done, 'ferry_jobs', { state: 'running' }), 0);
  assert.equal(sampleOf(done, 'ferry_jobs', { state: 'succeeded' }), 1);
  assert.equal(hasSample(done, 'ferry_job_dirty_bytes', labels), false);
  assert.equal(sampleOf(done, 'ferry_migration_downtime_seconds_count'), 1);
  assert.ok(
    Math.abs(
      sampleOf(done, 'ferry_migration_downtime_seconds_sum') - (record.downtimeMs ?? -1) / 1000,
    ) < 1e-9,
  );
});
