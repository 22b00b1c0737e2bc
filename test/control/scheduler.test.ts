import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type Demand, LIMITS_DEFAULT, plan, usageOf } from '../../src/control/scheduler.js';

const move = (id: string, from: string, to?: string): Demand => ({
  id,
  datastores: to === undefined ? [from] : [from, to],
});

test('scheduler: defaults are vSphere published limits, 2 per host and 8 per datastore', () => {
  assert.deepEqual(LIMITS_DEFAULT, { host: 2, datastore: 8 });
});

test('scheduler: at most the host limit start; the rest wait in FIFO order with positions', () => {
  const queued = ['a', 'b', 'c', 'd'].map((id, i) => move(id, `s${i}`, `t${i}`));
  const decided = plan(queued, usageOf([]), { host: 2, datastore: 8 });
  assert.deepEqual(decided.start, ['a', 'b']);
  assert.deepEqual(
    [...decided.waiting],
    [
      ['c', { position: 1, waitingFor: 'host limit: 2 of 2 migrations running on this host' }],
      ['d', { position: 2, waitingFor: 'host limit: 2 of 2 migrations running on this host' }],
    ],
  );
});

test('scheduler: a move counts on its source and its destination datastore', () => {
  const running = [move('r1', 'fast', 'slow')];
  const limits = { host: 10, datastore: 1 };
  // Both ends of r1 are full: a move from slow and a move to fast must wait, one elsewhere not.
  const decided = plan(
    [move('a', 'slow', 'other'), move('b', 'other2', 'fast'), move('c', 'x', 'y')],
    usageOf(running),
    limits,
  );
  assert.deepEqual(decided.start, ['c']);
  assert.equal(decided.waiting.get('a')?.waitingFor, 'datastore slow: 1 of 1 migrations');
  assert.equal(decided.waiting.get('b')?.waitingFor, 'datastore fast: 1 of 1 migrations');
  assert.deepEqual(
    [...decided.waiting.values()].map((place) => place.position),
    [1, 2],
  );
});

test('scheduler: a job held by a datastore limit does not hold a later job that fits', () => {
  const running = [move('r1', 'busy', 'b2'), move('r2', 'busy', 'b3')];
  const decided = plan(
    [move('a', 'busy', 'free'), move('b', 'x', 'y'), move('c', 'busy', 'z'), move('d', 'p', 'q')],
    usageOf(running),
    { host: 4, datastore: 2 },
  );
  assert.deepEqual(decided.start, ['b', 'd']);
  assert.deepEqual(
    [...decided.waiting].map(([id, place]) => [id, place.position]),
    [
      ['a', 1],
      ['c', 2],
    ],
  );
});

test('scheduler: jobs started in one round count against later ones in the same round', () => {
  const decided = plan(
    [move('a', 'd1', 'd2'), move('b', 'd1', 'd3'), move('c', 'd1', 'd4')],
    usageOf([]),
    { host: 8, datastore: 2 },
  );
  assert.deepEqual(decided.start, ['a', 'b']);
  assert.equal(decided.waiting.get('c')?.waitingFor, 'datastore d1: 2 of 2 migrations');
});

test('scheduler: receives from other hosts hold this host and their datastore', () => {
  const usage = usageOf([{ id: 'receive r', datastores: ['fast'] }]);
  assert.equal(usage.host, 1);
  assert.equal(usage.datastores.get('fast'), 1);
  const decided = plan([move('a', 'x', 'y'), move('b', 'x', 'z')], usage, {
    host: 2,
    datastore: 8,
  });
  assert.deepEqual(decided.start, ['a']);
  assert.equal(decided.waiting.get('b')?.position, 1);
});
