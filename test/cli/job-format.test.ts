import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  formatActivity,
  formatAmount,
  formatDuration,
  formatRate,
  percentDone,
} from '../../src/cli/job-format.js';
import { LineRenderer } from '../../src/cli/progress-bar.js';
import type { JobEvent, JobStatus } from '../../src/control/job-record.js';

const MIB = 1024 * 1024;

function status(patch: Partial<JobStatus> & { done?: number; total?: number }): JobStatus {
  const { done = 0, total = 1024 * MIB, ...rest } = patch;
  return {
    id: 'move-1',
    kind: 'migrate',
    moveId: 'move-1',
    queue: null,
    disk: 'vm1',
    vm: null,
    disks: ['vm1'],
    from: 'local',
    to: 'fast',
    sizeBytes: 1024 * MIB,
    method: 'dbt',
    requestedMethod: 'dbt',
    state: 'running',
    phase: 'copy',
    pass: 0,
    mode: null,
    copyPath: null,
    speedBytesPerSecond: 0,
    progress: { doneBytes: done, totalBytes: total, rateBytesPerSecond: 0, etaSeconds: null },
    dirtyBytes: 0,
    bytesCopied: done,
    passes: 0,
    createdAt: '2024-01-01T00:00:00.000Z',
    startedAt: '2024-01-01T00:00:00.000Z',
    finishedAt: null,
    durationMs: 0,
    downtimeMs: null,
    memory: null,
    error: null,
    allowed: ['cancel', 'speed'],
    ...rest,
  };
}

test('job format: a growing total is shown grown, and the percentage is of it', () => {
  const first = status({ done: 512 * MIB });
  assert.equal(formatAmount(first), '512M/1G');
  assert.equal(percentDone(first), 50);
  const grown = status({ done: 1024 * MIB, total: 1200 * MIB, pass: 2, dirtyBytes: 176 * MIB });
  assert.equal(formatAmount(grown), '1G/1.2G (+176M again)');
  assert.equal(percentDone(grown), 85);
  assert.equal(formatActivity(grown), 'dbt · copy · pass 2 · dirty 176M');
  assert.equal(
    formatActivity({ ...grown, copyPath: 'reflink' }),
    'dbt · copy · reflink · pass 2 · dirty 176M',
  );
  assert.equal(formatActivity({ ...grown, copyPath: 'read-write' }), formatActivity(grown));
  assert.equal(percentDone(status({ total: 0 })), 100);
});

test('job format: rates, ETAs, durations, activity', () => {
  assert.equal(formatRate(status({})), '- ETA ?');
  const moving = status({
    progress: { doneBytes: 0, totalBytes: MIB, rateBytesPerSecond: 200 * MIB, etaSeconds: 75 },
  });
  assert.equal(formatRate(moving), '200M/s ETA 1m15s');
  assert.deepEqual([0, 0.4, 1.754, 12.4, 850, 3200, 65_000, 7_260_000].map(formatDuration), [
    '0 ms',
    '0.4 ms',
    '1.75 ms',
    '12 ms',
    '850 ms',
    '3.2 s',
    '1m05s',
    '2h01m',
  ]);
  assert.equal(
    formatActivity(
      status({
        method: 'mirror',
        mode: 'async',
        state: 'cancelling',
        phase: 'rollback',
        speedBytesPerSecond: 50 * MIB,
      }),
    ),
    'mirror async · cancelling · rollback · dirty 0 · max 50M/s',
  );
});

test('job format: the line log prints history, events, and each tenth of the copy once', () => {
  const lines: string[] = [];
  const renderer = new LineRenderer((text) => lines.push(text));
  const time = '2024-01-01T12:34:56.000Z';
  renderer.start({
    ...status({}),
    events: [{ time, type: 'created', message: 'moving disk vm1' }],
  });
  const tick = (done: number, total = 1024 * MIB): JobEvent => ({
    type: 'progress',
    time,
    message: null,
    job: status({ done, total }),
  });
  for (const done of [100, 200, 300, 310, 320]) renderer.update(tick(done * MIB));
  // The total doubles: 400M is 19% of it, behind what was reported; no line goes back.
  renderer.update(tick(400 * MIB, 2048 * MIB));
  renderer.update({ type: 'pass', time, message: 'pass 2: 1G to copy', job: status({}) });
  const texts = lines.map((line) => line.replace(/^\d\d:\d\d:\d\d /, '').trimEnd());
  assert.deepEqual(texts, [
    'moving disk vm1',
    'copied 19% (200M/1G) at - ETA ?',
    'copied 29% (300M/1G) at - ETA ?',
    'copied 30% (310M/1G) at - ETA ?',
    'pass 2: 1G to copy',
  ]);
});
