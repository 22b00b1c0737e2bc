import assert from 'node:assert/strict';

/** Reading Prometheus' text format in tests: enough to find one sample, not a parser. */
export /** The value of the one sample `name{labels}` in a scrape; fails when absent. */
function sampleOf(text: string, name: string, labels: Record<string, string> = {}): number {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null || match[1] !== name) continue;
    const present = (match[2] ?? '').split(',');
    if (wanted.every((pair) => present.includes(pair))) return Number(match[3]);
  }
  assert.fail(`no sample ${name}{${wanted.join(',')}} in the scrape`);
}

/** True when some sample `name` carries every label of `labels`. */
export function hasSample(text: string, name: string, labels: Record<string, string>): boolean {
  try {
    sampleOf(text, name, labels);
    return true;
  } catch {
    return false;
  }
}
