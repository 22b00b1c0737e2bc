/** Medians and markdown tables for the migration benchmark's report. */

/** The median of the finite values; NaN when there is none. */
export function median(values: readonly number[]): number {
  const sorted = values.filter((value) => Number.isFinite(value)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const middle = Math.floor(sorted.length / 2);
  if (sorted.length % 2 === 1) return sorted[middle] ?? Number.NaN;
  return ((sorted[middle - 1] ?? Number.NaN) + (sorted[middle] ?? Number.NaN)) / 2;
}

/** The median of `pick` over the samples. */
export function medianOf<T>(samples: readonly T[], pick: (sample: T) => number | null): number {
  return median(samples.map((sample) => pick(sample) ?? Number.NaN));
}

/** A GitHub-flavoured markdown table, columns padded so it also reads as plain text. */
export function markdownTable(header: readonly string[], rows: readonly string[][]): string {
  const widths = header.map((title, i) =>
    Math.max(3, title.length, ...rows.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: readonly string[]): string =>
    `| ${widths.map((width, i) => (cells[i] ?? '').padEnd(width)).join(' | ')} |`;
  const rule = `| ${widths.map((width) => '-'.repeat(width)).join(' | ')} |`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** `value` with `digits` decimals, or `-` when it is not a number. */
export function fixed(value: number, digits: number): string {
  return Number.isFinite(value) ? value.toFixed(digits) : '-';
}

/** A ratio with two decimals, and whether it meets a goal: `0.97 (goal ≥ 0.95: yes)`. */
export function ratioAgainst(
  value: number,
  goal: { readonly atLeast?: number; readonly atMost?: number },
): string {
  if (!Number.isFinite(value)) return '-';
  const meets =
    (goal.atLeast === undefined || value >= goal.atLeast) &&
    (goal.atMost === undefined || value <= goal.atMost);
  const bound = goal.atLeast !== undefined ? `≥ ${goal.atLeast}` : `≤ ${goal.atMost}`;
  return `${value.toFixed(2)} (goal ${bound}: ${meets ? 'met' : 'missed'})`;
}
