import { FerryError } from '../util/errors.js';

/**
 * A protocol error ends one connection (STYLE.md, "Errors"): the peer broke the framing or the
 * state machine, so nothing more it sends can be trusted. Codes are `ERR_NBD_*`.
 */
export class NbdProtocolError extends FerryError {
  override readonly name = 'NbdProtocolError';
}
