import { FerryError } from '../util/errors.js';
import { formatSize, parseSize, SIZE_HELP } from '../util/size.js';

/**
 * Copy speeds as users write them: a size per second (`200M`, `200M/s`, `1G`), powers of 1024 as
 * every size in Ferry; `0` means unlimited. Shared by the API (which accepts a number or such a
 * string) and the CLI (which checks it before calling the API).
 */
export const SPEED_HELP = `bytes per second as ${SIZE_HELP}, optionally with /s; 0 for unlimited`;

/** Parses a speed; throws `ERR_BAD_SIZE` with a message that says what a speed looks like. */
export function parseSpeed(text: string): number {
  const bare = text.trim().replace(/\/s$/i, '');
  try {
    return parseSize(bare);
  } catch (error) {
    throw new FerryError('ERR_BAD_SIZE', `"${text}" is not a speed: use ${SPEED_HELP}`, {
      cause: error,
    });
  }
}

/** `52428800` → `50M/s`; `0` → `unlimited`. */
export function formatSpeed(bytesPerSecond: number): string {
  return bytesPerSecond === 0 ? 'unlimited' : `${formatSize(bytesPerSecond)}/s`;
}
