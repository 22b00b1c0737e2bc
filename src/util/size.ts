import { FerryError } from './errors.js';

/**
 * Human sizes: `512`, `64K`, `4M`, `10G`, `1T` (powers of 1024; `KiB`/`K`/`k` alike; a trailing
 * `B` is allowed). DESIGN.md, "Fixed points".
 */
const unitShift: Record<string, number> = { '': 0, K: 10, M: 20, G: 30, T: 40, P: 50 };

export const SIZE_HELP = 'a size such as 512, 64K, 4M, 10G or 1T (powers of 1024)';

export class SizeParseError extends FerryError<'ERR_BAD_SIZE'> {
  override readonly name = 'SizeParseError';
  constructor(message: string) {
    super('ERR_BAD_SIZE', message);
  }
}

export function parseSize(text: string): number {
  const match = /^\s*(\d+)(?:\.(\d+))?\s*([kKmMgGtTpP]?)(?:i?[bB])?\s*$/.exec(text);
  if (!match) throw new SizeParseError(`"${text}" is not ${SIZE_HELP}`);
  const [, whole = '0', fraction, unit = ''] = match;
  const shift = unitShift[unit.toUpperCase()] ?? 0;
  const scale = 2 ** shift;
  const bytes =
    Number(whole) * scale + (fraction ? Math.round(Number(`0.${fraction}`) * scale) : 0);
  if (fraction && !Number.isInteger(Number(`0.${fraction}`) * scale)) {
    throw new SizeParseError(`"${text}" is not a whole number of bytes; use ${SIZE_HELP}`);
  }
  if (!Number.isSafeInteger(bytes)) throw new SizeParseError(`"${text}" is too large`);
  return bytes;
}

/** The shortest exact or one-decimal rendering: 1073741824 → "1G", 1536 → "1.5K". */
export function formatSize(bytes: number): string {
  const units = ['', 'K', 'M', 'G', 'T', 'P'];
  let value = bytes;
  let index = 0;
  while (value >= 1024 && index < units.length - 1) {
    value /= 1024;
    index += 1;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
  return `${text}${units[index]}`;
}
