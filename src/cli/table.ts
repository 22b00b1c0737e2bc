/**
 * Aligned plain-text tables for human output: a header row, then one row per item, columns
 * separated by two spaces, numbers right-aligned. Scripts use `--json` instead, so the layout
 * may change between versions.
 */
export interface Column<Row> {
  readonly header: string;
  readonly value: (row: Row) => string;
  readonly align?: 'left' | 'right';
}

export function formatTable<Row>(columns: readonly Column<Row>[], rows: readonly Row[]): string {
  const cells = rows.map((row) => columns.map((column) => column.value(row)));
  const widths = columns.map((column, index) =>
    Math.max(column.header.length, ...cells.map((line) => line[index]?.length ?? 0)),
  );
  const render = (line: readonly string[]): string =>
    columns
      .map((column, index) => {
        const text = line[index] ?? '';
        const width = widths[index] ?? 0;
        return column.align === 'right' ? text.padStart(width) : text.padEnd(width);
      })
      .join('  ')
      .trimEnd();
  return [render(columns.map((column) => column.header)), ...cells.map(render)].join('\n');
}

/** `key: value` lines with the values aligned, for one item (`disk show`). */
export function formatFields(fields: readonly (readonly [string, string])[]): string {
  const width = Math.max(...fields.map(([key]) => key.length));
  return fields.map(([key, value]) => `${`${key}:`.padEnd(width + 1)}  ${value}`).join('\n');
}
