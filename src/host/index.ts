export {
  Agent,
  type AgentOptions,
  type CreateDiskRequest,
  type CreateVmRequest,
  type DatastoreInfo,
  type DiskInfo,
  type ImportDiskRequest,
  type MoveVmRequest,
  type VmInfo,
  type VmMove,
  type VmMoveResult,
} from './agent.js';
export { HostError, HostErrorCode } from './errors.js';
export { checkName, isValidName, NAME_HELP } from './names.js';
