export {
  Agent,
  type AgentOptions,
  type CreateDiskRequest,
  type DatastoreInfo,
  type DiskInfo,
  type ImportDiskRequest,
} from './agent.js';
export { HostError, HostErrorCode } from './errors.js';
export { checkName, isValidName, NAME_HELP } from './names.js';
