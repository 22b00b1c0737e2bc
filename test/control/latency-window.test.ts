import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LatencyWindow } from '../../src/control/latency-window.js';

test('latency window: the mean and IOPS of the requests inside the window only', () => {
  const window = new LatencyWindow(60_000);
  assert.deepEqual(window.figuresOf('d'), {
    latencyMs: null,
    iops: 0,
    operations: 0,
    latencySumUs: 0,
  });
  // 0 s: 1000 slow requests (100 ms each) before the window we will look at.
  window.add('d', { timeMs: 0, operations: 0, latencySumUs: 0 });
  window.add('d', { timeMs: 10_000, operations: 1000, latencySumUs: 1000 * 100_000 });
  assert.equal(window.figuresOf('d').latencyMs, 100);
  assert.equal(window.figuresOf('d').iops, 100);
  // Then 60 s of fast ones (1 ms): the slow ones leave the window.
  window.add('d', { timeMs: 40_000, operations: 4000, latencySumUs: 1000 * 100_000 + 3000 * 1000 });
  window.add('d', { timeMs: 70_000, operations: 7000, latencySumUs: 1000 * 100_000 + 6000 * 1000 });
  const figures = window.figuresOf('d');
  assert.equal(figures.operations, 6000);
  assert.equal(figures.latencyMs, 1);
  assert.equal(figures.iops, 100);
  // Counters that go back (the disk was re-opened) start a new window.
  window.add('d', { timeMs: 75_000, operations: 5, latencySumUs: 5 });
  assert.equal(window.figuresOf('d').operations, 0);
  window.retain(new Set());
  assert.equal(window.figuresOf('d').latencyMs, null);
});
