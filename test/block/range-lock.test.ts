import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LockWaits, RangeLock } from '../../src/block/range-lock.js';

/** True once `promise` settled, checked after the pending turns ran. */
async function isSettled(promise: Promise<unknown>): Promise<boolean> {
  let settled = false;
  void promise.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  await new Promise((resolve) => setImmediate(resolve));
  return settled;
}

test('range lock: disjoint ranges are held at once, an overlapping one waits for its release', async () => {
  const lock = new RangeLock();
  const releaseA = await lock.acquire(0, 100);
  const releaseB = await lock.acquire(100, 100);
  assert.equal(lock.heldCount, 2);
  const waiting = lock.acquire(50, 100);
  assert.equal(await isSettled(waiting), false, 'overlaps both holds');
  releaseA();
  assert.equal(await isSettled(waiting), false, 'still overlaps the second hold');
  releaseB();
  const releaseC = await waiting;
  assert.equal(lock.heldCount, 1);
  releaseC();
  releaseC(); // a second release does nothing
  assert.equal(lock.heldCount, 0);
});

test('range lock: overlapping acquirers run one after another, never two at once', async () => {
  const lock = new RangeLock();
  let inside = 0;
  let insideMax = 0;
  const work = Array.from({ length: 8 }, async (_v, i) => {
    const release = await lock.acquire(i * 10, 25);
    inside += 1;
    insideMax = Math.max(insideMax, inside);
    await new Promise((resolve) => setTimeout(resolve, 1));
    inside -= 1;
    release();
  });
  await Promise.all(work);
  // Ranges i and i+1 overlap, i and i+3 do not: some run together, but no neighbours.
  assert.ok(insideMax >= 2 && insideMax <= 4, `at most every third at once (${insideMax})`);
  assert.equal(lock.heldCount, 0);
});

test('range lock: waitIdle resolves once nothing at all is held', async () => {
  const lock = new RangeLock();
  const releaseA = await lock.acquire(0, 10);
  const idle = lock.waitIdle();
  const releaseB = await lock.acquire(20, 10);
  releaseA();
  assert.equal(await isSettled(idle), false, 'a hold taken after the call counts too');
  releaseB();
  await idle;
  assert.equal(lock.heldCount, 0);
});

test('range lock: counts every acquire, and the waits and their time of those that overlapped', async () => {
  const lock = new RangeLock();
  const guest = new LockWaits();
  const releaseChunk = await lock.acquire(0, 100);
  const releaseFree = await lock.acquire(200, 100, guest);
  assert.deepEqual({ ...guest }, { acquires: 1, waits: 0, waitMs: 0 }, 'no overlap, no wait');
  const waiting = lock.acquire(50, 10, guest);
  await new Promise((resolve) => setTimeout(resolve, 20));
  releaseChunk();
  (await waiting)();
  releaseFree();
  assert.equal(guest.acquires, 2);
  assert.equal(guest.waits, 1);
  assert.ok(guest.waitMs >= 15, `waited about 20 ms (${guest.waitMs})`);
  // The lock's own count has every acquirer's, the one without a tally too.
  assert.equal(lock.waits.acquires, 3);
  assert.equal(lock.waits.waits, 1);
  assert.equal(lock.waits.waitMs, guest.waitMs);
});

test('range lock: an acquire woken by one release but still overlapping another counts one wait', async () => {
  const lock = new RangeLock();
  const releaseA = await lock.acquire(0, 100);
  const releaseB = await lock.acquire(100, 100);
  const waiting = lock.acquire(50, 100);
  releaseA();
  assert.equal(await isSettled(waiting), false);
  releaseB();
  (await waiting)();
  assert.equal(lock.waits.waits, 1);
  assert.equal(lock.waits.acquires, 3);
});
