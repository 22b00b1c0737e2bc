/** Seeded randomness for tests, so a failing fast-check seed or a fixed seed replays exactly. */

/** A deterministic PRNG (mulberry32): numbers in [0, 1). */
export function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `length` bytes drawn from `random`. */
export function randomBytes(length: number, random: () => number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 1) out[i] = Math.floor(random() * 256);
  return out;
}

/**
 * The seed of a hand-rolled random test: `FERRY_TEST_SEED` to replay a failure, else a fresh one.
 * Pass it to `withSeed`, so that a failure says which seed to replay.
 */
export function testSeed(): number {
  const fixed = process.env.FERRY_TEST_SEED;
  if (fixed !== undefined) return Number(fixed);
  return 1 + Math.floor(Math.random() * (2 ** 31 - 2));
}

/** Runs `work`; if it fails, the error says the seed (`FERRY_TEST_SEED=…` replays it). */
export async function withSeed<T>(seed: number, work: () => Promise<T> | T): Promise<T> {
  try {
    return await work();
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new Error(`${message} (replay with FERRY_TEST_SEED=${seed})`, { cause: error });
  }
}

/**
 * fast-check's options for a property: `numRuns`; the failing run's own error in the report (the
 * test runner does not print an error's `cause`, where fast-check puts it otherwise); and the
 * seed from `FERRY_TEST_SEED`, to replay a failure (the report prints the seed and the path).
 */
export function propertyOptions(numRuns: number): {
  numRuns: number;
  includeErrorInReport: boolean;
  seed?: number;
} {
  const seed = process.env.FERRY_TEST_SEED;
  const options = { numRuns, includeErrorInReport: true };
  return seed === undefined ? options : { ...options, seed: Number(seed) };
}
