import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CopyState, type CopyStateBits } from '../../src/migrate/copy-state.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SHAPE = {
  sizeBytes: 8 * MiB,
  copiedGranuleBytes: 64 * KiB,
  savedGranuleBytes: 64 * KiB,
  intentRegionBytes: MiB,
};

/**
 * A state whose persists are recorded (the bits as each persist wrote them): one read back from
 * `loaded`, a bare one, or with `'fresh'` one made by `CopyState.fresh` with the first file it is
 * written in (as CopyStateFile.create writes it before the move begins).
 */
function recorded(loaded?: CopyStateBits | 'fresh'): { state: CopyState; files: CopyStateBits[] } {
  const files: CopyStateBits[] = [];
  const persist = async (): Promise<number> => {
    files.push(state.encode());
    return state.lastEncodeId;
  };
  const state: CopyState =
    loaded === 'fresh' ? CopyState.fresh(SHAPE, persist) : new CopyState(SHAPE, persist, loaded);
  if (loaded === 'fresh') files.push(state.encode());
  return { state, files };
}

/** What a state read back from `bits` would copy, in bytes. */
function toCopyBytes(bits: CopyStateBits): number {
  return new CopyState(SHAPE, async () => 0, bits).toCopy(64 * KiB).dirtyBytes;
}

test('copy state: copies count only once flushed, and a resume copies the rest', async () => {
  const { state, files } = recorded();
  state.startTracking();
  const token = state.copyStarting(0, 2 * MiB);
  state.copyLanded(token);
  assert.equal(state.copiedBytes, 0, 'landed is not copied before the flush');
  let flushes = 0;
  await state.checkpoint(async () => {
    flushes += 1;
  });
  assert.equal(flushes, 1);
  assert.equal(state.copiedBytes, 2 * MiB);
  const last = files.at(-1);
  assert.ok(last !== undefined);
  assert.equal(toCopyBytes(last), 6 * MiB);
});

test('copy state: a write persists its intent first, once per region; the resume copies it again', async () => {
  const { state, files } = recorded();
  state.startTracking();
  state.copyLanded(state.copyStarting(0, 4 * MiB));
  await state.checkpoint(async () => {});
  const persisted = files.length;
  const waiting = state.beforeWrite(MiB + 4 * KiB, 4 * KiB);
  assert.ok(waiting !== undefined, 'the first write to a region waits for its intent');
  await waiting;
  assert.equal(files.length, persisted + 1);
  const file = files.at(-1);
  assert.ok(file !== undefined);
  // The crash could come now, with the write on the source only: the resume copies its region.
  assert.equal(toCopyBytes(file), 4 * MiB + MiB);
  state.afterWrite(MiB + 4 * KiB, 4 * KiB);
  assert.equal(state.beforeWrite(MiB + 64 * KiB, 4 * KiB), undefined, 'then no sync per write');
  state.afterWrite(MiB + 64 * KiB, 4 * KiB);
  assert.equal(files.length, persisted + 1);
});

test('copy state: a write racing a copy run keeps it from counting', async () => {
  const { state } = recorded();
  state.startTracking();
  const token = state.copyStarting(0, MiB);
  await state.beforeWrite(4 * KiB, 4 * KiB);
  state.afterWrite(4 * KiB, 4 * KiB);
  state.copyLanded(token);
  await state.checkpoint(async () => {});
  assert.equal(state.copiedBytes, 0);
  // A run that starts while a write is in flight does not count either.
  const inFlight = state.beforeWrite(2 * MiB, 4 * KiB);
  await inFlight;
  const during = state.copyStarting(2 * MiB, MiB);
  state.afterWrite(2 * MiB, 4 * KiB);
  state.copyLanded(during);
  await state.checkpoint(async () => {});
  assert.equal(state.copiedBytes, 0);
});

test('copy state: a checkpoint clears a quiet intent with its copied bits, never a busy one', async () => {
  const { state, files } = recorded();
  state.startTracking();
  state.copyLanded(state.copyStarting(0, 2 * MiB));
  await state.checkpoint(async () => {});
  await state.beforeWrite(0, 4 * KiB);
  state.afterWrite(0, 4 * KiB);
  await state.beforeWrite(MiB, 4 * KiB); // still in flight at the checkpoint
  await state.checkpoint(async () => {});
  const file = files.at(-1);
  assert.ok(file !== undefined);
  const read = new CopyState(SHAPE, async () => 0, file);
  // Region 0: intent gone, copied gone: copied again. Region 1: intent kept.
  assert.equal(read.toCopy(64 * KiB).dirtyBytes, 8 * MiB);
  state.afterWrite(MiB, 4 * KiB);
  await state.checkpoint(async () => {});
  state.copyLanded(state.copyStarting(0, 2 * MiB));
  await state.checkpoint(async () => {});
  assert.equal(state.copiedBytes, 2 * MiB);
});

test('copy state: nothing counts before tracking starts, and a failed flush loses nothing', async () => {
  const { state } = recorded();
  state.copyLanded(state.copyStarting(0, MiB));
  await state.checkpoint(async () => {});
  assert.equal(state.copiedBytes, 0);
  state.startTracking();
  state.copyLanded(state.copyStarting(0, MiB));
  await assert.rejects(
    state.checkpoint(async () => {
      throw new Error('EIO');
    }),
  );
  await state.checkpoint(async () => {});
  assert.equal(state.copiedBytes, MiB);
});

test('copy state: a region keeps its intent until idle for a whole checkpoint interval', async () => {
  const { state, files } = recorded();
  state.startTracking();
  await state.checkpoint(async () => {});
  await state.beforeWrite(3 * MiB, 4 * KiB);
  state.afterWrite(3 * MiB, 4 * KiB);
  await state.checkpoint(async () => {});
  assert.equal(state.beforeWrite(3 * MiB, 4 * KiB), undefined, 'still durable: no persist');
  state.afterWrite(3 * MiB, 4 * KiB);
  await state.checkpoint(async () => {});
  await state.checkpoint(async () => {});
  const persisted = files.length;
  assert.ok(state.beforeWrite(3 * MiB, 4 * KiB) !== undefined, 'cleared once idle');
  state.afterWrite(3 * MiB, 4 * KiB);
  assert.ok(files.length >= persisted);
});

test('copy state: a coarse saved granule is copied only where all of it is', async () => {
  const coarse = { ...SHAPE, savedGranuleBytes: 512 * KiB };
  const files: CopyStateBits[] = [];
  const state: CopyState = new CopyState(coarse, async () => {
    files.push(state.encode());
    return state.lastEncodeId;
  });
  state.startTracking();
  state.copyLanded(state.copyStarting(0, 768 * KiB));
  await state.checkpoint(async () => {});
  assert.equal(state.copiedBytes, 768 * KiB);
  const file = files.at(-1);
  assert.ok(file !== undefined);
  const read = new CopyState(coarse, async () => 0, file);
  assert.equal(read.copiedBytes, 512 * KiB, 'the half-copied granule is copied again');
});

test('copy state: an intent cleared and set again while a persist was in flight waits for the next one', async () => {
  const gates: Array<() => void> = [];
  const state: CopyState = new CopyState(SHAPE, async () => {
    state.encode();
    const id = state.lastEncodeId;
    await new Promise<void>((resolve) => gates.push(resolve));
    return id;
  });
  const release = async (): Promise<void> => {
    while (gates.length === 0) await new Promise((resolve) => setImmediate(resolve));
    gates.shift()?.();
    await new Promise((resolve) => setImmediate(resolve));
  };
  state.startTracking();
  const first = state.beforeWrite(0, 4 * KiB);
  await release();
  await first;
  state.afterWrite(0, 4 * KiB);
  const busy = state.checkpoint(async () => {}); // region 0 was written: it keeps its intent
  await release();
  await busy;
  // A persist in flight that writes region 0's intent set (for a write to region 5)...
  const other = state.beforeWrite(5 * MiB, 4 * KiB);
  await new Promise((resolve) => setImmediate(resolve));
  // ...while a checkpoint clears region 0 (idle) and a write sets it again.
  const idle = state.checkpoint(async () => {});
  await new Promise((resolve) => setImmediate(resolve));
  const again = state.beforeWrite(0, 4 * KiB);
  assert.ok(again !== undefined, 'the write waits for a persist');
  await release(); // the persist that wrote the old bit completes
  await other;
  state.afterWrite(5 * MiB, 4 * KiB);
  const next = state.beforeWrite(64 * KiB, 4 * KiB);
  assert.ok(next !== undefined, 'the old persist does not make the new bit durable');
  await release(); // the persist that writes the new bit (and the checkpoint's clear)
  await Promise.all([again, idle]);
  await release(); // the one `next` asked for, queued behind it
  await next;
  state.afterWrite(0, 4 * KiB);
  state.afterWrite(64 * KiB, 4 * KiB);
  assert.equal(state.beforeWrite(0, 4 * KiB), undefined, 'durable once its own persist is done');
  state.afterWrite(0, 4 * KiB);
});

test('copy state: a fresh state sets the intent ahead, so no write waits; checkpoints clear it where the guest did not write and keep the copies there', async () => {
  const { state, files } = recorded('fresh');
  assert.equal(toCopyBytes(files[0]!), 8 * MiB, 'a crash before any checkpoint copies it all');
  state.startTracking();
  assert.equal(state.beforeWrite(MiB + 4 * KiB, 4 * KiB), undefined, 'no persist before a write');
  state.afterWrite(MiB + 4 * KiB, 4 * KiB);
  state.copyLanded(state.copyStarting(0, 2 * MiB));
  await state.checkpoint(async () => {});
  assert.equal(files.length, 2, 'only the checkpoint persisted');
  // Region 0 saw no write: its intent went and its copy counts. Region 1 was written in the
  // interval: its intent stays. Regions 2..7 were left alone: their intent went.
  assert.equal(toCopyBytes(files.at(-1)!), 7 * MiB);
  assert.equal(state.copiedBytes, MiB);
  await state.checkpoint(async () => {});
  // Region 1 idle now: its intent clears with its copied granules, since a write went there.
  assert.equal(toCopyBytes(files.at(-1)!), 7 * MiB);
  const file = files.at(-1)!;
  assert.equal(new CopyState(SHAPE, async () => 0, file).copiedBytes, MiB, 'region 0 only');
  const waiting = state.beforeWrite(3 * MiB, 4 * KiB);
  assert.ok(waiting !== undefined, 'a region whose intent was cleared waits again');
  await waiting;
  state.afterWrite(3 * MiB, 4 * KiB);
});

test('copy state: an intent read back after a crash clears with its copied granules (writes may have gone there)', async () => {
  const intent = Buffer.alloc(4);
  intent[0] = 0b1; // region 0
  const copied = Buffer.alloc(16);
  copied.fill(0xff, 0, 4); // granules 0..31: regions 0 and 1
  const { state, files } = recorded({ copied, intent });
  assert.equal(state.copiedBytes, MiB, 'region 1 copied; region 0 under intent');
  await state.checkpoint(async () => {});
  assert.equal(toCopyBytes(files.at(-1)!), 7 * MiB, "region 0's stale copies are not trusted");
});
