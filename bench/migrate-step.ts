/**
 * Progress lines and time limits for the migration benchmark's steps: every step that waits on a
 * tool or on Ferry has a limit and fails with a message naming the step, not a silent hang.
 */

export function log(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

/**
 * Runs `work`, rejecting with an error naming `what` if it has not settled within `timeoutMs`
 * (the work itself is left to the caller's cleanup, which stops the children it waits on).
 */
export async function step<T>(what: string, timeoutMs: number, work: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const limit = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: not done within ${(timeoutMs / 1000).toFixed(0)} s`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([work(), limit]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
export function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
