/**
 * `ferry job list|speed|cancel` on queued jobs, in-process against the real API (port 0) whose
 * job manager moves a fake agent's disks with real migrations, held by gates while the test looks.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCli } from '../../src/cli/run.js';
import type { JobStatus } from '../../src/control/job-record.js';
import { finished, nextEvent } from '../control/job-waits.js';
import { startJobsApi } from '../control/jobs-api.js';

const MIB = 1024 * 1024;

test('job queue (CLI): list shows places and what each waits for; speed and cancel work while queued', async () => {
  const api = await startJobsApi(3);
  try {
    const { fake, jobs } = api;
    fake.isGatingAll = true;
    jobs.setLimits({ host: 1, datastore: 8 });
    const ferry = async (argv: readonly string[]) => {
      let stdout = '';
      let stderr = '';
      const code = await runCli({
        argv,
        version: '0.0.0-test',
        env: { FERRY_API: api.url },
        cwd: api.dataDir,
        stdout: (text) => {
          stdout += text;
        },
        stderr: (text) => {
          stderr += text;
        },
        serve: async () => assert.fail('serve is not run here'),
      });
      assert.equal(code, 0, stderr);
      return stdout;
    };
    const running = await jobs.startMigration({ disk: 'vm1', datastore: 'fast' });
    const second = await jobs.startMigration({ disk: 'vm2', datastore: 'fast' });
    const third = await jobs.startMigration({ disk: 'vm3', datastore: 'fast' });
    const hostFull = 'host limit: 1 of 1 migrations running on this host';

    const table = await ferry(['job', 'list']);
    assert.match(table, new RegExp(`${second.id} .* queued #1 `));
    assert.match(table, new RegExp(`${third.id} .* queued #2 `));
    assert.ok(table.includes(`job ${second.id} is queued #1: waiting for ${hostFull}\n`), table);
    assert.ok(table.includes(`job ${third.id} is queued #2: waiting for ${hostFull}\n`), table);
    const listed = JSON.parse(await ferry(['job', 'list', '--json'])) as JobStatus[];
    assert.deepEqual(
      listed.map((job) => [job.id, job.state, job.queue]),
      [
        [running.id, 'running', null],
        [second.id, 'queued', { position: 1, waitingFor: hostFull }],
        [third.id, 'queued', { position: 2, waitingFor: hostFull }],
      ],
    );
    const limits = (await (await fetch(`${api.url}/v1/limits`)).json()) as unknown;
    assert.deepEqual(limits, {
      host: 1,
      datastore: 8,
      running: { host: 1, datastores: { local: 1, fast: 1 } },
      queued: 2,
    });

    assert.equal(
      await ferry(['job', 'speed', second.id, '4M']),
      `Job ${second.id} will copy, once it starts, at up to 4M/s.\n`,
    );
    assert.equal(jobs.get(second.id).speedBytesPerSecond, 4 * MIB);
    assert.match(await ferry(['job', 'cancel', second.id]), /^Cancelled job \w+ before it started/);
    assert.equal(jobs.get(second.id).state, 'cancelled');
    assert.match(await ferry(['job', 'show', third.id]), /queue: +#1: waiting for host limit/);

    const thirdRuns = nextEvent(
      jobs,
      third.id,
      (e) => e.type === 'state' && e.job.state === 'running',
    );
    fake.gates[0]!.open();
    await thirdRuns;
    fake.gates[1]!.open();
    for (const id of [running.id, third.id])
      assert.equal((await finished(jobs, id)).state, 'succeeded');
    assert.deepEqual(
      fake.requests.map((request) => request.name),
      ['vm1', 'vm3'],
    );
  } finally {
    for (const gate of api.fake.gates) gate.open();
    await api.close();
  }
});
