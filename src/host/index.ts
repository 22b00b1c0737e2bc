export {
  Agent,
  type AgentOptions,
  type CreateDiskRequest,
  type CreateVmRequest,
  type DatastoreInfo,
  type DiskInfo,
  type ImportDiskRequest,
  type MoveVmRequest,
  type ResumableMove,
  type VmInfo,
  type VmMove,
  type VmMoveResult,
} from './agent.js';
export { HostError, HostErrorCode } from './errors.js';
export { checkName, isValidName, NAME_HELP } from './names.js';
export {
  PEER_TIMEOUT_MS,
  type PeerCallOptions,
  PeerClient,
  type PeerClientOptions,
  PeerError,
} from './peer-client.js';
export {
  CREDENTIAL_SCHEME,
  CREDENTIAL_WINDOW_MS,
  CredentialFailure,
  signRequest,
  verifyCredential,
} from './peer-credential.js';
export { type AddPeerRequest, normalizePeerUrl, type Peer, PeerRegistry } from './peers.js';
