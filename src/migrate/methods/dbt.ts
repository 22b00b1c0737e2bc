import { assert } from '../../util/assert.js';
import type { Method } from '../method.js';

// TODO(#3): being written; replaced by the real method.
export const dbt: Method = () => {
  assert(false, 'method dbt is not written yet');
};
