import type { ApiClient } from './api-client.js';

/**
 * What a command needs besides its arguments: the API, and where its output goes. Built once by
 * run.ts from the environment; commands never read `process` themselves.
 */
export interface CliContext {
  readonly api: ApiClient;
  /** Writes a line (or lines) to standard output. */
  readonly print: (text: string) => void;
  /** The working directory relative paths are resolved against before they go to the API. */
  readonly cwd: string;
}

/** `--json` output: indented, one document per command. */
export function printJson(context: CliContext, value: unknown): void {
  context.print(JSON.stringify(value, null, 2));
}
