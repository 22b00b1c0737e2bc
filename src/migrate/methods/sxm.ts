import { assert } from '../../util/assert.js';
import type { Method } from '../method.js';

// TODO(#3): being written; replaced by the real method.
export const sxm: Method = () => {
  assert(false, 'method sxm is not written yet');
};
