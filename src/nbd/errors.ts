/**
 * A protocol error ends one connection (STYLE.md, "Errors"): the peer broke the framing or the
 * state machine, so nothing more it sends can be trusted. Each has a stable code.
 */
export class NbdProtocolError extends Error {
  override readonly name = 'NbdProtocolError';
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
