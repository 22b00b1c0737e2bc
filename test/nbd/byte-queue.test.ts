import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import { prng, testSeed, withSeed } from '../block/random.js';

function filled(chunks: number[]): ByteQueue {
  const queue = new ByteQueue();
  let value = 0;
  for (const size of chunks) {
    const chunk = Buffer.alloc(size);
    for (let i = 0; i < size; i += 1) chunk[i] = value++ & 0xff;
    queue.push(chunk);
  }
  return queue;
}

test('take within one chunk returns a view, across chunks a copy, in order', () => {
  const queue = filled([4, 3, 10]);
  assert.deepEqual([...queue.take(2)], [0, 1]);
  assert.deepEqual([...queue.take(4)], [2, 3, 4, 5]);
  assert.equal(queue.length, 11);
  assert.deepEqual([...queue.peek(3)], [6, 7, 8]);
  assert.equal(queue.length, 11, 'peek consumes nothing');
  assert.equal(queue.skip(5), 5);
  assert.deepEqual([...queue.take(6)], [11, 12, 13, 14, 15, 16]);
  assert.equal(queue.length, 0);
});

test('random splits deliver the same bytes as one chunk', async () => {
  const seed = testSeed();
  await withSeed(seed, () => splitRandomly(prng(seed)));
});

function splitRandomly(random: () => number): void {
  for (let round = 0; round < 50; round += 1) {
    const sizes = Array.from(
      { length: 1 + Math.floor(random() * 8) },
      () => 1 + Math.floor(random() * 9),
    );
    const total = sizes.reduce((a, b) => a + b, 0);
    const queue = filled(sizes);
    const seen: number[] = [];
    while (queue.length > 0) {
      const n = 1 + Math.floor(random() * queue.length);
      seen.push(...queue.take(n));
    }
    assert.deepEqual(
      seen,
      Array.from({ length: total }, (_, i) => i & 0xff),
    );
  }
}

test('skip past the end drops only what is there', () => {
  const queue = filled([3]);
  assert.equal(queue.skip(10), 3);
  assert.equal(queue.length, 0);
});

test('takeInto joins chunks into a caller buffer; isContiguous says when take would copy', () => {
  const queue = filled([3, 5]);
  assert.equal(queue.isContiguous(3), true);
  assert.equal(queue.isContiguous(4), false);
  const target = Buffer.alloc(6);
  queue.takeInto(target);
  assert.deepEqual([...target], [0, 1, 2, 3, 4, 5]);
  assert.equal(queue.length, 2);
});
