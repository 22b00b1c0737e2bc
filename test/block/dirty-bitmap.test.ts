import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { DirtyBitmap } from '../../src/block/dirty-bitmap.js';
import { propertyOptions } from './random.js';

const GRANULE = 4096;

/** The reference model: a set of dirty granule indexes. */
function granulesOf(offset: number, length: number): number[] {
  if (length === 0) return [];
  const out: number[] = [];
  for (
    let i = Math.floor(offset / GRANULE);
    i <= Math.floor((offset + length - 1) / GRANULE);
    i += 1
  )
    out.push(i);
  return out;
}

// Sizes and lengths spanning several 32-granule words, whole and partial.
const sizeArb = fc.integer({ min: 1, max: 200 * GRANULE + 1000 });
const opArb = (size: number) =>
  fc
    .record({
      kind: fc.constantFrom('mark', 'clear', 'mark'),
      offset: fc.integer({ min: 0, max: size - 1 }),
      length: fc.oneof(
        fc.integer({ min: 0, max: 3 * GRANULE }),
        fc.integer({ min: 0, max: 80 * GRANULE }),
      ),
    })
    .map((op) => ({ ...op, length: Math.min(op.length, size - op.offset) }));

test('dirty bitmap agrees with a set model over random marks and clears', () => {
  fc.assert(
    fc.property(
      sizeArb.chain((size) =>
        fc.tuple(fc.constant(size), fc.array(opArb(size), { maxLength: 60 })),
      ),
      ([size, ops]) => {
        const bitmap = new DirtyBitmap(size, GRANULE);
        const model = new Set<number>();
        for (const op of ops) {
          if (op.kind === 'mark') bitmap.mark(op.offset, op.length);
          else bitmap.clear(op.offset, op.length);
          for (const g of granulesOf(op.offset, op.length)) {
            if (op.kind === 'mark') model.add(g);
            else model.delete(g);
          }
        }
        const lastGranule = Math.ceil(size / GRANULE) - 1;
        let expectedBytes = 0;
        for (const g of model) expectedBytes += g === lastGranule ? size - g * GRANULE : GRANULE;
        assert.equal(bitmap.dirtyBytes, expectedBytes);
        // isDirty and isAllDirty over each op's range, as the model says.
        for (const op of ops) {
          const touched = granulesOf(op.offset, op.length);
          assert.equal(
            bitmap.isDirty(op.offset, op.length),
            touched.some((g) => model.has(g)),
          );
          assert.equal(
            bitmap.isAllDirty(op.offset, op.length),
            touched.every((g) => model.has(g)),
          );
        }
        // Walking nextDirty visits exactly the model's granules, in order.
        const walked: number[] = [];
        for (
          let run = bitmap.nextDirty(0, 5 * GRANULE);
          run;
          run = bitmap.nextDirty(run.offset + run.length, 5 * GRANULE)
        ) {
          assert.ok(run.length > 0 && run.length <= 5 * GRANULE && run.offset + run.length <= size);
          walked.push(...granulesOf(run.offset, run.length));
        }
        assert.deepEqual(
          walked,
          [...model].sort((a, b) => a - b),
        );
      },
    ),
    propertyOptions(300),
  );
});

test('nextDirty from inside a granule never reaches into a clean one', () => {
  const bitmap = new DirtyBitmap(10 * GRANULE, GRANULE);
  bitmap.mark(0, 1);
  assert.deepEqual(bitmap.nextDirty(100, 8 * GRANULE), { offset: 100, length: GRANULE - 100 });
  assert.equal(bitmap.nextDirty(GRANULE, 8 * GRANULE), null);
});

test('merge restores the bits of a failed pass', () => {
  const bitmap = new DirtyBitmap(1 << 20, GRANULE);
  bitmap.mark(0, 8 * GRANULE);
  const pass = new DirtyBitmap(1 << 20, GRANULE);
  pass.merge(bitmap);
  bitmap.clear(0, 1 << 20);
  bitmap.mark(100 * GRANULE, 1);
  bitmap.merge(pass);
  assert.equal(bitmap.dirtyBytes, 9 * GRANULE);
  assert.equal(bitmap.isDirty(7 * GRANULE, 1), true);
  assert.equal(bitmap.isDirty(8 * GRANULE, GRANULE), false);
});

test('unionDirtyBytes equals the dirty bytes of the merged bitmaps', () => {
  const rangeArb = fc.tuple(fc.nat(), fc.nat({ max: 3 * GRANULE }));
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 70 * GRANULE + 100 }),
      fc.array(rangeArb, { maxLength: 10 }),
      fc.array(rangeArb, { maxLength: 10 }),
      (size, marksA, marksB) => {
        const a = new DirtyBitmap(size, GRANULE);
        const b = new DirtyBitmap(size, GRANULE);
        for (const [bitmap, marks] of [
          [a, marksA],
          [b, marksB],
        ] as const) {
          for (const [at, length] of marks) {
            const offset = at % size;
            bitmap.mark(offset, Math.min(length, size - offset));
          }
        }
        const merged = a.clone();
        merged.merge(b);
        assert.equal(a.unionDirtyBytes(b), merged.dirtyBytes);
        assert.equal(b.unionDirtyBytes(a), merged.dirtyBytes);
      },
    ),
    propertyOptions(100),
  );
});
