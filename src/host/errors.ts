import { FerryError } from '../util/errors.js';

/**
 * Codes of the agent's operating errors. They are part of the API (clients branch on them), so
 * a code once published keeps its meaning; src/api/error-table.ts gives each its HTTP status and
 * CLI exit code.
 */
export const HostErrorCode = {
  /** A datastore or disk name outside names.ts's alphabet. */
  BadName: 'ERR_BAD_NAME',
  /** A disk size that is not a positive multiple of the sector size. */
  BadSize: 'ERR_BAD_SIZE',
  /** A path that is not absolute, does not exist, or is not the kind of file asked for. */
  BadPath: 'ERR_BAD_PATH',
  /** No datastore or disk of that name. */
  NotFound: 'ERR_NOT_FOUND',
  /** The name (or the datastore path, or the image file) is already taken. */
  Exists: 'ERR_EXISTS',
  /** A datastore still holds disks. */
  DatastoreNotEmpty: 'ERR_DATASTORE_NOT_EMPTY',
  /** Several datastores and none named: the agent will not guess where a disk goes. */
  DatastoreAmbiguous: 'ERR_DATASTORE_AMBIGUOUS',
  /** A datastore's directory is missing or unreadable (e.g. an NFS mount that is down). */
  DatastoreUnavailable: 'ERR_DATASTORE_UNAVAILABLE',
  /** An import source on another filesystem: adopting it would need a full copy. */
  CrossDevice: 'ERR_CROSS_DEVICE',
  /** A descriptor or registry file that cannot be parsed or fails validation. */
  BadDescriptor: 'ERR_BAD_DESCRIPTOR',
  /** Another agent holds the data directory. */
  Locked: 'ERR_DATA_DIR_LOCKED',
  /** A move to the datastore the disk is already in. */
  SameDatastore: 'ERR_SAME_DATASTORE',
  /** The disk is being moved by another job. */
  DiskBusy: 'ERR_DISK_BUSY',
  /** A VM's disk list that is empty or names a disk twice. */
  BadVmDisks: 'ERR_BAD_VM_DISKS',
  /** The disk lives on another host; this one only passes it through. */
  RemoteDisk: 'ERR_REMOTE_DISK',
  /** The agent has been closed. */
  Closed: 'ERR_AGENT_CLOSED',
  /** A peer host's URL that is not `http(s)://HOST:PORT`. */
  BadUrl: 'ERR_BAD_URL',
  /** A pre-shared key (or its identity) that cannot be used between agents. */
  BadKey: 'ERR_BAD_KEY',
  /** A peer host's agent did not answer: network failure, nothing listening, or timeout. */
  PeerUnreachable: 'ERR_PEER_UNREACHABLE',
  /** A peer host's agent answered with an error of its own (its code is the error's remoteCode). */
  PeerRefused: 'ERR_PEER_REFUSED',
  /** A peer host's agent refused our credential: the two hosts' key files differ. */
  PeerUnauthorized: 'ERR_PEER_UNAUTHORIZED',
  /** A VM setting that cannot run: memory, CPUs, a NIC, a MAC, a kernel file, an accelerator. */
  BadVmConfig: 'ERR_BAD_VM_CONFIG',
  /** The VM runs, and what was asked needs it stopped (remove it, move one of its disks alone). */
  VmRunning: 'ERR_VM_RUNNING',
  /** The VM does not run, and what was asked needs it running. */
  VmStopped: 'ERR_VM_STOPPED',
  /** QEMU refused to start, died, or answered a QMP command with an error. */
  Qemu: 'ERR_QEMU',
  /** QEMU's memory migration failed or did not converge: the guest runs on where it ran. */
  MemoryMigration: 'ERR_MEMORY_MIGRATION',
} as const;
export type HostErrorCode = (typeof HostErrorCode)[keyof typeof HostErrorCode];

export class HostError extends FerryError<HostErrorCode> {
  override readonly name = 'HostError';
}

/** `ERR_NOT_FOUND` for the `kind` named `name`. */
export function notFound(kind: 'disk' | 'datastore' | 'VM', name: string): HostError {
  return new HostError(HostErrorCode.NotFound, `no ${kind} named ${name}`);
}
