import type { Method, MethodName } from '../method.js';
import { dbt } from './dbt.js';
import { mirror } from './mirror.js';
import { snapshot } from './snapshot.js';
import { sxm } from './sxm.js';

const METHODS: Readonly<Record<MethodName, Method>> = { mirror, dbt, snapshot, sxm };

export function methodNamed(name: MethodName): Method {
  return METHODS[name];
}
