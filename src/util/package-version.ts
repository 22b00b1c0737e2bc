import { readFileSync } from 'node:fs';

/**
 * Ferry's version, from package.json (the API reports it so peers can compare). Read once by the
 * caller at start, never on a request path. The compiled module runs from dist/src/util/, three
 * levels below the package root, as bin/ferry.ts assumes too.
 */
export function readPackageVersion(): string {
  try {
    const text = readFileSync(new URL('../../../package.json', import.meta.url), 'utf8');
    const version = (JSON.parse(text) as { version?: unknown }).version;
    return typeof version === 'string' ? version : 'unknown';
  } catch {
    // An installed tree without package.json still serves; peers see "unknown".
    return 'unknown';
  }
}
