import { assert } from '../../util/assert.js';
import type { Method } from '../method.js';

// TODO(#3): being written; replaced by the real method.
export const snapshot: Method = () => {
  assert(false, 'method snapshot is not written yet');
};
