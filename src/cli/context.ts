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
  /** Writes text to standard error as it is: progress and notes, apart from `--json` output. */
  readonly printError: (text: string) => void;
  /** Standard error when it is a terminal (progress bars are drawn there); null otherwise. */
  readonly terminal: TerminalStream | null;
  /**
   * Routes Ctrl-C (SIGINT) to `handler` instead of ending the process, until the returned
   * function is called.
   */
  readonly onInterrupt: (handler: () => void) => () => void;
}

/** What a progress bar needs of a terminal (a `tty.WriteStream` is one). */
export type TerminalStream = NodeJS.WritableStream & {
  readonly isTTY?: boolean;
  readonly columns?: number;
};

/** `--json` output: indented, one document per command. */
export function printJson(context: CliContext, value: unknown): void {
  context.print(JSON.stringify(value, null, 2));
}
