/**
 * `ferry migrate` and `ferry job ...` in-process: the real command tree (runCli) against the
 * real API on port 0, whose job manager moves disks of a fake agent with real migrations
 * (test/control/fake-agent.ts). Waits on output and job events, never on sleeps.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import { BlockErrorCode } from '../../src/block/errors.js';
import type { TerminalStream } from '../../src/cli/context.js';
import { type CliEnvironment, runCli } from '../../src/cli/run.js';
import type { JobManager } from '../../src/control/job-manager.js';
import type { JobRecord, JobStatus } from '../../src/control/job-record.js';
import type { FakeAgent } from '../control/fake-agent.js';
import { finished, nextEvent } from '../control/job-waits.js';
import { type JobsApi, startJobsApi } from '../control/jobs-api.js';

const MIB = 1024 * 1024;
let api: JobsApi;
let fake: FakeAgent;
let jobs: JobManager;
let apiUrl: string;

before(async () => {
  api = await startJobsApi(9);
  ({ fake, jobs, url: apiUrl } = api);
});

after(() => api.close());

interface Run {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs one command line; `onStderr` sees standard error as it is written. */
async function ferry(
  argv: readonly string[],
  extra: Partial<CliEnvironment> & { onStderr?: (all: string) => void } = {},
): Promise<Run> {
  let stdout = '';
  let stderr = '';
  const { onStderr, ...environment } = extra;
  const code = await runCli({
    argv,
    version: '0.0.0-test',
    env: { FERRY_API: apiUrl },
    cwd: api.dataDir,
    stdout: (text) => {
      stdout += text;
    },
    stderr: (text) => {
      stderr += text;
      onStderr?.(stderr);
    },
    serve: async () => assert.fail('serve is not run here'),
    ...environment,
  });
  return { code, stdout, stderr };
}

/** The id of the next job the manager announces. */
function nextJobId(): Promise<string> {
  return nextEvent(jobs, null, (event) => event.type === 'created').then((event) => event.job.id);
}

test('migrate: follows the job to its end, a line per event, and prints a summary', async () => {
  const run = await ferry(['migrate', 'vm1', '--to', 'fast']);
  assert.equal(run.code, 0, run.stderr);
  assert.match(
    run.stdout,
    /^Moved disk vm1 from local to fast with mirror: copied 1M in 1 pass in [\d.]+ (ms|s); downtime [\d.]+ (ms|s)\.\n$/,
  );
  const lines = run.stderr.trimEnd().split('\n');
  for (const line of lines) assert.match(line, /^\d\d:\d\d:\d\d \S/, line);
  assert.match(lines[0] ?? '', /moving disk vm1 from datastore local to fast with method mirror/);
  for (const expected of [/phase copy/, /switched over/, /moved disk vm1 to datastore fast/]) {
    assert.ok(
      lines.some((line) => expected.test(line)),
      `${expected}: ${run.stderr}`,
    );
  }
});

test('migrate --json prints the final record; --detach returns at once', async () => {
  const json = await ferry(['migrate', 'vm2', '--to', 'fast', '--json', '--speed', '64M/s']);
  assert.equal(json.code, 0, json.stderr);
  const record = JSON.parse(json.stdout) as JobRecord;
  assert.equal(record.state, 'succeeded');
  assert.equal(record.speedBytesPerSecond, 64 * MIB);
  assert.equal(record.bytesCopied, MIB);

  fake.next = { isGated: true };
  const detached = await ferry(['migrate', 'vm3', '--to', 'fast', '--detach', '--thick']);
  assert.equal(detached.code, 0, detached.stderr);
  assert.match(
    detached.stdout,
    /^Started job ([0-9a-f]{8}): moving disk vm3 from local to fast with mirror \(speed unlimited\)\.\n {2}follow it: {2}ferry job watch \1\n/,
  );
  assert.equal(fake.requests.at(-1)?.provisioning, 'thick');
  const id = /job ([0-9a-f]{8})/.exec(detached.stdout)?.[1] ?? '';
  assert.equal(jobs.get(id).state, 'running');
  fake.gates.at(-1)!.open();
  await finished(jobs, id);
});

test('migrate: a failed job exits 1 and says the guest runs on the source', async () => {
  fake.next = { fault: { code: BlockErrorCode.EIO, afterBytes: 128 * 1024 } };
  const run = await ferry(['migrate', 'vm4', '--to', 'fast']);
  assert.equal(run.code, 1);
  assert.equal(run.stdout, '');
  assert.match(
    run.stderr,
    /ferry: job [0-9a-f]{8} failed: .*\(ERR_TARGET_FAILED\)\. Disk vm4 was not moved: its guest runs on datastore local as before\.\n$/,
  );
});

test('migrate: cancelled from another shell (ferry job cancel), exits 1', async () => {
  fake.next = { isGated: true };
  const announced = nextJobId();
  const following = ferry(['migrate', 'vm5', '--to', 'fast']);
  const id = await announced;
  await fake.gates.at(-1)!.reached;
  const cancel = await ferry(['job', 'cancel', id]);
  assert.equal(cancel.code, 0, cancel.stderr);
  assert.match(
    cancel.stdout,
    new RegExp(`^Cancelling job ${id}: disk vm5 stays on datastore local`),
  );
  const again = await ferry(['job', 'cancel', id]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /ferry: cannot cancel job .*state cancelling/);
  fake.gates.at(-1)!.open();
  const run = await following;
  assert.equal(run.code, 1);
  assert.match(run.stderr, new RegExp(`ferry: job ${id} was cancelled\\. Disk vm5 was not moved`));
});

test('migrate: Ctrl-C stops following, not the job; job list, show, speed, watch', async () => {
  fake.next = { isGated: true };
  let interrupt: () => void = () => assert.fail('no interrupt handler installed');
  let handlers = 0;
  const run = await ferry(['migrate', 'vm6', '--to', 'fast'], {
    onInterrupt: (handler) => {
      handlers += 1;
      interrupt = handler;
      return () => {
        handlers -= 1;
      };
    },
    // The history arrives with the stream's first event: the command follows the job now.
    onStderr: (all) => {
      if (all.includes('moving disk vm6')) interrupt();
    },
  });
  assert.equal(run.code, 130, run.stderr);
  assert.equal(handlers, 0, 'the Ctrl-C handler is removed');
  const id = /Stopped following job ([0-9a-f]{8}); it keeps running/.exec(run.stderr)?.[1] ?? '';
  assert.ok(id !== '', run.stderr);
  assert.match(
    run.stderr,
    new RegExp(`ferry job watch ${id}\\n.*ferry job show ${id}\\n.*ferry job cancel ${id}\\n`, 's'),
  );
  assert.equal(jobs.get(id).state, 'running');

  const speed = await ferry(['job', 'speed', id, '2M']);
  assert.equal(speed.code, 0, speed.stderr);
  assert.equal(speed.stdout, `Job ${id} now copies at up to 2M/s.\n`);
  assert.equal(
    (await ferry(['job', 'speed', id, '0'])).stdout,
    `Job ${id} now copies without a limit.\n`,
  );
  assert.equal((await ferry(['job', 'speed', id, 'fast'])).code, 2);

  const list = await ferry(['job', 'list']);
  assert.equal(list.code, 0);
  const [header, ...rows] = list.stdout.trimEnd().split('\n');
  assert.match(
    header ?? '',
    /^ID\s+DISK\s+FROM\s+TO\s+METHOD\s+STATE\s+DONE\s+COPIED\s+STARTED\s+DURATION$/,
  );
  assert.ok(
    rows.some((row) => row.startsWith(id) && / vm6 +local +fast +mirror +running /.test(row)),
  );
  const listed = JSON.parse((await ferry(['job', 'list', '--json'])).stdout) as JobStatus[];
  assert.ok(listed.some((job) => job.id === id));

  const show = await ferry(['job', 'show', id]);
  assert.equal(show.code, 0);
  assert.match(show.stdout, /^id: +[0-9a-f]{8}$/m);
  assert.match(show.stdout, /^move: +local -> fast$/m);
  assert.match(show.stdout, /^state: +running$/m);
  assert.match(show.stdout, /^allowed: +cancel, speed$/m);
  assert.match(show.stdout, /^events:\n {2}\d\d:\d\d:\d\d moving disk vm6/m);
  assert.match(show.stdout, /speed set to unlimited$/m);
  const missing = await ferry(['job', 'show', 'move-404']);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^ferry: no job move-404\n$/);

  const watching = ferry(['job', 'watch', id, '--json']);
  await nextEvent(jobs, id, (event) => event.type === 'progress');
  fake.gates.at(-1)!.open();
  const watched = await watching;
  assert.equal(watched.code, 0, watched.stderr);
  assert.equal((JSON.parse(watched.stdout) as JobRecord).state, 'succeeded');
});

test('migrate: on a terminal, a progress bar on stderr, notes above it, cursor restored', async () => {
  const chunks: string[] = [];
  let onChunk: (text: string) => void = () => {};
  const terminal = Object.assign(
    new Writable({
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(chunk.toString());
        onChunk(chunk.toString());
        callback();
      },
    }),
    { isTTY: true, columns: 160 },
  ) as TerminalStream;
  // Held at 0% until the bar has been drawn by its own redraw timer, then let go.
  fake.next = { isGated: true };
  onChunk = (text) => {
    if (/\[-+\]\s+0% 0\/1M - ETA \? \| mirror sync · copy · dirty [\d.]+[KM]/.test(text)) {
      fake.gates.at(-1)!.open();
    }
  };
  const run = await ferry(['migrate', 'vm7', '--to', 'fast'], { terminal });
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stderr, '', 'on a terminal, nothing but the bar goes to stderr');
  const drawn = chunks.join('');
  assert.ok(
    drawn.includes('\x1B[?25l') && drawn.includes('\x1B[?25h'),
    'cursor hidden, then shown',
  );
  assert.match(drawn, /\[[^\]]+\] 100% 1M\/1M .*\| mirror sync · switchover · dirty 0/);
  assert.match(drawn, /\d\d:\d\d:\d\d switched over; guest I\/O was held/);
  assert.match(run.stdout, /^Moved disk vm7 from local to fast/);
});

test('migrate: usage errors exit 2; refusals from the API exit 1 with its message', async () => {
  for (const argv of [
    ['migrate', 'vm8'],
    ['migrate', 'vm8', '--to', 'fast', '--thin', '--thick'],
    ['migrate', 'vm8', '--to', 'fast', '--speed', 'quick'],
    ['migrate', 'vm8', '--to', 'fast', '--method', 'teleport'],
    ['job', 'speed', 'move-1'],
    ['job'],
  ]) {
    const run = await ferry(argv);
    assert.equal(run.code, 2, `${argv.join(' ')}: ${run.stderr}`);
  }
  const same = await ferry(['migrate', 'vm8', '--to', 'local']);
  assert.equal(same.code, 1);
  assert.match(same.stderr, /^ferry: disk vm8 is already in datastore local\n$/);
  const nowhere = await ferry(['migrate', 'vm8', '--to', 'nope']);
  assert.equal(nowhere.code, 1);
  assert.match(nowhere.stderr, /no datastore named nope/);
  const help = await ferry(['migrate', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /ferry migrate vm1 --to fast --speed 200M --thick --detach/);
  assert.match(help.stdout, /130 stopped following with Ctrl-C/);
  for (const verb of ['list', 'show', 'watch', 'cancel', 'speed']) {
    const verbHelp = await ferry(['job', verb, '--help']);
    assert.equal(verbHelp.code, 0);
    assert.match(verbHelp.stdout, /Example/);
  }
});
