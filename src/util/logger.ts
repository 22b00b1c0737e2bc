/**
 * The logging shape every layer accepts; pino's logger satisfies it. Layers take a logger as an
 * argument (no module-level singletons) and default to `silentLogger`.
 */
export interface Logger {
  debug(object: object, message?: string): void;
  info(object: object, message?: string): void;
  warn(object: object, message?: string): void;
  error(object: object, message?: string): void;
}

const ignore = (): void => {};
export const silentLogger: Logger = { debug: ignore, info: ignore, warn: ignore, error: ignore };
