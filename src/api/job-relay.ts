import type { FastifyRequest } from 'fastify';
import { JobErrorCode } from '../control/job-states.js';
import type { RemoteJobs } from '../control/remote-jobs.js';
import { errorCodeOf } from '../util/errors.js';

/**
 * Which host answers for a job id (control/remote-jobs.ts): this host's job of that id if it
 * has one, else, for an id that is another host's job, that host (relayed).
 *
 * A call signed by a peer agent is answered from this host's own jobs only, never relayed: an
 * agent asks a host about the jobs that host runs, and relaying its question again could send
 * it back and forth between two hosts.
 */
export function remoteFor(
  request: FastifyRequest,
  remote: RemoteJobs | undefined,
): RemoteJobs | undefined {
  return request.peerIdentity === null ? remote : undefined;
}

/**
 * `local()`'s answer; if it throws `ERR_JOB_NOT_FOUND` and `remote` is given, `relay(remote)`'s
 * (which throws `ERR_JOB_NOT_FOUND` in turn for an id that is no other host's job either).
 */
export async function localOrRemote<T, R>(
  local: () => T,
  remote: RemoteJobs | undefined,
  relay: (remote: RemoteJobs) => Promise<R>,
): Promise<T | R> {
  try {
    return local();
  } catch (error) {
    if (remote === undefined || errorCodeOf(error) !== JobErrorCode.NotFound) throw error;
    return relay(remote);
  }
}
