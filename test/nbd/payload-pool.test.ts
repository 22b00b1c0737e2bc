import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PayloadPool } from '../../src/nbd/payload-pool.js';

test('a released buffer is handed out again for the same size class', () => {
  const pool = new PayloadPool(1024 * 1024);
  const first = pool.acquire(100_000);
  assert.equal(first.length, 100_000);
  pool.release(first);
  const second = pool.acquire(70_000);
  assert.equal(second.buffer, first.buffer, 'same 128 KiB slab reused');
  assert.equal(second.length, 70_000);
});

test('the pool keeps no more than its limit', () => {
  const pool = new PayloadPool(128 * 1024);
  const a = pool.acquire(128 * 1024);
  const b = pool.acquire(128 * 1024);
  pool.release(a);
  pool.release(b);
  assert.equal(pool.acquire(128 * 1024).buffer, a.buffer);
  assert.notEqual(pool.acquire(128 * 1024).buffer, b.buffer, 'b was dropped, not kept');
});

test('4 KiB reads get 4 KiB slabs, reused', () => {
  const pool = new PayloadPool(1024 * 1024);
  const first = pool.acquire(4096);
  assert.equal(first.buffer.byteLength, 4096);
  pool.release(first);
  assert.equal(pool.acquire(4000).buffer, first.buffer);
});
