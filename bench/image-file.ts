import { randomFill } from 'node:crypto';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';

/**
 * The raw images the benchmarks work on: fully written with random data (every read hits data,
 * no block is a hole or compresses), or sparse with random data in scattered extents.
 */

const WRITE_CHUNK_BYTES = 4 * 1024 * 1024;
const fill = promisify(randomFill);

/** Writes every byte of a new image with random data, so reads hit data and no block is a hole. */
export async function writeImage(
  path: string,
  sizeBytes: number,
  stop: AbortSignal,
): Promise<void> {
  const chunk = Buffer.allocUnsafe(WRITE_CHUNK_BYTES);
  const handle = await open(path, 'wx');
  try {
    for (let at = 0; at < sizeBytes; at += chunk.length) {
      stop.throwIfAborted();
      await fill(chunk);
      const length = Math.min(chunk.length, sizeBytes - at);
      await handle.write(chunk, 0, length, at);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export interface ScatterSpec {
  /** Share of the image to allocate, in (0, 1]. */
  readonly fraction: number;
  readonly extentBytes: number;
}

/**
 * Creates a sparse image of `sizeBytes` and writes random data into `fraction` of it, as
 * `extentBytes` extents at distinct aligned offsets chosen at random; the rest stays holes.
 * Resolves with the bytes written.
 */
export async function writeScatteredImage(
  path: string,
  sizeBytes: number,
  spec: ScatterSpec,
  stop: AbortSignal,
): Promise<number> {
  const slots = Math.floor(sizeBytes / spec.extentBytes);
  const picked = pickDistinct(slots, Math.max(1, Math.round(slots * spec.fraction)));
  const chunk = Buffer.allocUnsafe(spec.extentBytes);
  const handle = await open(path, 'wx');
  try {
    await handle.truncate(sizeBytes);
    for (const slot of picked) {
      stop.throwIfAborted();
      await fill(chunk);
      await handle.write(chunk, 0, chunk.length, slot * spec.extentBytes);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
  return picked.length * spec.extentBytes;
}

/** `count` distinct integers of [0, `range`), ascending (a partial Fisher-Yates shuffle). */
function pickDistinct(range: number, count: number): number[] {
  const pool = Array.from({ length: range }, (_, index) => index);
  const taken = Math.min(count, range);
  for (let i = 0; i < taken; i += 1) {
    const j = i + Math.floor(Math.random() * (range - i));
    const swap = pool[i] ?? i;
    pool[i] = pool[j] ?? j;
    pool[j] = swap;
  }
  return pool.slice(0, taken).sort((a, b) => a - b);
}
