import { ClusterErrorCode } from '../control/clusters.js';
import { JobErrorCode } from '../control/job-states.js';
import { HostErrorCode } from '../host/errors.js';
import { MigrateErrorCode } from '../migrate/errors.js';

/**
 * The one table from error codes to what the outside sees: the HTTP status of an API reply and
 * the exit code of the CLI (STYLE.md, "Errors"). Exit 2 means the command was used wrongly (fix
 * the arguments); exit 1 means the operation failed. Codes not listed are internal: 500, exit 1.
 */
export interface ErrorMapping {
  readonly httpStatus: number;
  readonly exitCode: 1 | 2;
}

/** Codes the API itself raises, beside the agent's (host/errors.ts). */
export const ApiErrorCode = {
  /** The request does not match the route's schema, or its body is not JSON. */
  BadRequest: 'ERR_BAD_REQUEST',
  /** No route for that method and path. */
  NoRoute: 'ERR_NO_ROUTE',
  /** A caller from another address without a valid credential (api/auth.ts). */
  Unauthorized: 'ERR_UNAUTHORIZED',
  /** A caller that is known but may not do this from where it calls (token management). */
  Forbidden: 'ERR_FORBIDDEN',
  /** Anything without a listed code: a bug or an unexpected system error. */
  Internal: 'ERR_INTERNAL',
} as const;

const BAD_USAGE: ErrorMapping = { httpStatus: 400, exitCode: 2 };
const BAD_INPUT: ErrorMapping = { httpStatus: 400, exitCode: 1 };
const NOT_FOUND: ErrorMapping = { httpStatus: 404, exitCode: 1 };
const CONFLICT: ErrorMapping = { httpStatus: 409, exitCode: 1 };
const UNAVAILABLE: ErrorMapping = { httpStatus: 503, exitCode: 1 };
const INTERNAL: ErrorMapping = { httpStatus: 500, exitCode: 1 };

const TABLE: Readonly<Record<string, ErrorMapping>> = {
  [ApiErrorCode.BadRequest]: BAD_USAGE,
  [ApiErrorCode.NoRoute]: NOT_FOUND,
  [ApiErrorCode.Unauthorized]: { httpStatus: 401, exitCode: 1 },
  [ApiErrorCode.Forbidden]: { httpStatus: 403, exitCode: 1 },
  [HostErrorCode.BadName]: BAD_USAGE,
  [HostErrorCode.BadSize]: BAD_USAGE,
  [HostErrorCode.BadPath]: BAD_USAGE,
  [HostErrorCode.DatastoreAmbiguous]: BAD_USAGE,
  [HostErrorCode.BadVmDisks]: BAD_USAGE,
  [HostErrorCode.CrossDevice]: BAD_INPUT,
  [HostErrorCode.NotFound]: NOT_FOUND,
  [HostErrorCode.Exists]: CONFLICT,
  [HostErrorCode.DatastoreNotEmpty]: CONFLICT,
  [HostErrorCode.DatastoreUnavailable]: UNAVAILABLE,
  [HostErrorCode.Closed]: UNAVAILABLE,
  // Moving a disk where it already is conflicts with where it is, as a taken name does.
  [HostErrorCode.SameDatastore]: CONFLICT,
  [HostErrorCode.DiskBusy]: CONFLICT,
  // The disk lives on another host: the command belongs there.
  [HostErrorCode.RemoteDisk]: CONFLICT,
  [HostErrorCode.BadUrl]: BAD_USAGE,
  [HostErrorCode.BadVmConfig]: BAD_USAGE,
  [HostErrorCode.VmRunning]: CONFLICT,
  [HostErrorCode.VmStopped]: CONFLICT,
  // The agent is fine; the QEMU process it drives failed, as an upstream does for a gateway.
  [HostErrorCode.Qemu]: { httpStatus: 502, exitCode: 1 },
  [HostErrorCode.MemoryMigration]: { httpStatus: 502, exitCode: 1 },
  [HostErrorCode.BadKey]: BAD_USAGE,
  // The agent is fine; the host it relays to did not answer, or refused what we asked.
  [HostErrorCode.PeerUnreachable]: UNAVAILABLE,
  [HostErrorCode.PeerRefused]: { httpStatus: 502, exitCode: 1 },
  // Two hosts configured with different keys: a conflict between them, fixed by the operator.
  [HostErrorCode.PeerUnauthorized]: CONFLICT,
  // A key file the CLI or the agent could not read or parse (nbd/psk-file.ts): fix the argument.
  ERR_PSK_FILE: BAD_USAGE,
  // A --tls setting that cannot be used (nbd/tls-credentials.ts): fix the argument.
  ERR_TLS_CONFIG: BAD_USAGE,
  // A peer that cannot say how a commit ended: the disk is held until it can.
  [MigrateErrorCode.CommitUnknown]: UNAVAILABLE,
  [JobErrorCode.NotFound]: NOT_FOUND,
  [JobErrorCode.State]: CONFLICT,
  // Not the request but this host's load: the same request succeeds later.
  [JobErrorCode.HostBusy]: UNAVAILABLE,
  // A job's outcome more than a request's; the CLI exits 1 for a job that ended so.
  [MigrateErrorCode.Cancelled]: CONFLICT,
  // The agent is fine, the storage it relays to failed: a gateway whose upstream failed.
  [MigrateErrorCode.TargetFailed]: { httpStatus: 502, exitCode: 1 },
  [MigrateErrorCode.SourceFailed]: { httpStatus: 502, exitCode: 1 },
  // A datastore out of space (block/errors.ts code): 507 Insufficient Storage says exactly that.
  ENOSPC: { httpStatus: 507, exitCode: 1 },
  [ClusterErrorCode.NotFound]: NOT_FOUND,
  [ClusterErrorCode.Exists]: CONFLICT,
  [ClusterErrorCode.BadSetting]: BAD_INPUT,
  // The datastore's state, not the request, is in the way: exit maintenance, or choose another.
  [ClusterErrorCode.Maintenance]: CONFLICT,
};

export function mappingOf(code: string): ErrorMapping {
  return TABLE[code] ?? INTERNAL;
}
