/**
 * The one base of Ferry's own errors (STYLE.md, "Errors"): a stable `code` that callers branch
 * on, a message written for the person who has to act on it, and the `cause` it wraps. The API
 * maps codes to HTTP statuses and CLI exit codes in one table (src/api/error-table.ts).
 */
export class FerryError<Code extends string = string> extends Error {
  override readonly name: string = 'FerryError';
  readonly code: Code;
  constructor(code: Code, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/**
 * The stable code of any error that carries one (ours, `SizeParseError`, `BlockError`, a Node
 * system error such as `ENOENT`), or undefined.
 */
export function errorCodeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** The message of anything thrown, for wrapping and logging. */
export function errorMessageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
