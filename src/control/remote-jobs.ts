import { HostError, HostErrorCode } from '../host/errors.js';
import { PeerClient, PeerError } from '../host/peer-client.js';
import type { Peer, PeerRegistry } from '../host/peers.js';
import type { ReceiveInfo } from '../host/receiver.js';
import type { ProgressSnapshot } from '../migrate/progress.js';
import { errorCodeOf, errorMessageOf, FerryError } from '../util/errors.js';
import type { JobRecord, JobStatus } from './job-record.js';
import { JobError, JobErrorCode } from './job-states.js';

/**
 * The jobs of other hosts that this host takes part in: a cross-host move is a job on its
 * source host only (job id = move id), while the destination has a receive of the same id
 * (host/receiver.ts). So that `ferry job` works on either host (issue 7), the destination
 * answers for such an id by asking the source:
 *
 * - The source is the peer whose name (ours for it) is the name the source gave itself
 *   (`ferry serve --name`, sent with the receive); failing that, the one peer whose key identity
 *   is the one the source proved. Several peers sharing that identity (one key file copied to
 *   every host) leave the source unknown rather than guessed.
 * - Reads and verbs go to the source's job API as signed calls (host/peer-client.ts); the
 *   source's answer comes back as it is, plus `runsOn`, our name for that host. A refusal by the
 *   source (409 `ERR_JOB_STATE`, 404 `ERR_JOB_NOT_FOUND`, 400 ...) is thrown with the source's
 *   code, so the status and exit code are the ones a local job would give.
 * - A receive ends with its move (finished or aborted), often before the source's job reaches
 *   its last state, and a client that followed the job then reads the final record. So each
 *   receive seen here is remembered with its host (the newest REMEMBERED_MAX), and its job keeps
 *   being asked of that host until the host forgets it too.
 *
 * Only receives under way or remembered are relayed: any other unknown id is 404
 * `ERR_JOB_NOT_FOUND` as before, without a call to any host.
 */
export const LIST_TIMEOUT_MS = 2_000;
const REMEMBERED_MAX = 100;

/** A job another host runs, as this host shows it. */
export type RemoteJobStatus = JobStatus & {
  /** Our name for the host that runs the job (`ferry host list`). */
  readonly runsOn: string;
};
export type RemoteJobRecord = JobRecord & { readonly runsOn: string };

/**
 * A job of another host whose disk this host receives, while that host cannot tell us about it
 * (unreachable, unknown here, or no longer knowing the job): what this host knows of the move.
 */
export interface UnreachableJob {
  readonly id: string;
  readonly kind: 'migrate';
  readonly disk: string;
  readonly vm: null;
  readonly disks: readonly string[];
  /** Our name for the source host; null when no known host matches it. */
  readonly runsOn: string | null;
  /** The source host's name for itself. */
  readonly sourceHost: string;
  /** The datastore here that receives the disk. */
  readonly to: string;
  readonly sizeBytes: number;
  /** The receive is under way, whatever the source's job is doing. */
  readonly state: 'running';
  /** `doneBytes`: bytes received so far (copy and mirrored guest writes); no rate is known. */
  readonly progress: ProgressSnapshot;
  /** Why the source's own record is missing. */
  readonly error: { readonly code: string; readonly message: string };
}

export type RemoteJobEntry = RemoteJobStatus | UnreachableJob;

export interface RemoteJobsOptions {
  /** The receives under way here (`Receiver.list`); read at each call. */
  readonly receives: () => readonly ReceiveInfo[];
  readonly peers: PeerRegistry;
  /** Bound of each host's answer to a listing; default LIST_TIMEOUT_MS. */
  readonly listTimeoutMs?: number;
}

/** The host that runs a job, and, while the move is under way, the receive of it here. */
interface Route {
  readonly peer: Peer;
  readonly receive: ReceiveInfo | undefined;
}

export class RemoteJobs {
  private readonly options: RemoteJobsOptions;
  private readonly listTimeoutMs: number;
  /** Job id → our name for the host that runs it; oldest first. */
  private readonly remembered = new Map<string, string>();
  /** The source's job id → the move (receive) id it journals, as the sources' lists said. */
  private readonly aliases = new Map<string, string>();

  constructor(options: RemoteJobsOptions) {
    this.options = options;
    this.listTimeoutMs = options.listTimeoutMs ?? LIST_TIMEOUT_MS;
  }

  /**
   * The source's whole record of job `id`, with `runsOn`. Throws `ERR_JOB_NOT_FOUND` when `id`
   * is no receive here (nor a remembered one), `ERR_PEER_UNREACHABLE` when the source is not
   * among our hosts, and a PeerClient error (or the source's own code) when the call fails.
   */
  async get(id: string): Promise<RemoteJobRecord> {
    return this.call(id, (client, path) => client.get<JobRecord>(path));
  }

  /** Forwards a cancel to the source; answers and throws as `get`. */
  cancel(id: string): Promise<RemoteJobRecord> {
    return this.call(id, (client, path) => client.post<JobRecord>(`${path}/cancel`, {}));
  }

  /** Forwards a new copy rate (bytes per second, 0 unlimited); answers and throws as `get`. */
  setSpeed(id: string, bytesPerSecond: number): Promise<RemoteJobRecord> {
    return this.call(id, (client, path) =>
      client.post<JobRecord>(`${path}/speed`, { speed: bytesPerSecond }),
    );
  }

  /**
   * Opens the source's event stream of job `id` (`GET /v1/jobs/:id/events`), unread; throws as
   * `get` before anything was sent. `signal` ends the stream (see PeerClient.stream).
   */
  async events(id: string, signal: AbortSignal): Promise<ReadableStream<Uint8Array>> {
    const route = await this.routeOf(id);
    const client = new PeerClient(route.peer);
    return client.stream(`${jobPath(id)}/events`, { signal }).catch((error: unknown) => {
      throw relayed(error);
    });
  }

  /**
   * One entry per receive under way here and per remembered job its host still knows, asking
   * each source host once (all in parallel, each bounded by the list timeout). A receive whose
   * host does not answer with its job is listed as an `UnreachableJob`; a remembered job that is
   * gone from its host is forgotten. Oldest first. Never throws for a host's failure.
   */
  async list(): Promise<RemoteJobEntry[]> {
    const byPeer = new Map<string, { peer: Peer; ids: Map<string, ReceiveInfo | undefined> }>();
    const unknown: UnreachableJob[] = [];
    const receives = this.options.receives();
    for (const receive of receives) {
      const peer = this.sourceOf(receive);
      if (peer === undefined) unknown.push(unreachable(receive, null, noSourceError(receive)));
      else this.remember(receive.id, peer.name);
    }
    const live = new Map(receives.map((receive) => [receive.id, receive]));
    for (const [id, name] of this.remembered) {
      const peer = this.options.peers.get(name);
      if (peer === undefined) continue;
      const group = byPeer.get(name) ?? { peer, ids: new Map() };
      group.ids.set(id, live.get(id));
      byPeer.set(name, group);
    }
    const found = new Map<string, RemoteJobEntry>();
    await Promise.all(
      [...byPeer.values()].map(async ({ peer, ids }) => {
        for (const [id, entry] of await this.askHost(peer, ids)) found.set(id, entry);
      }),
    );
    const entries: RemoteJobEntry[] = [];
    for (const id of this.remembered.keys()) {
      const entry = found.get(id);
      if (entry !== undefined) entries.push(entry);
    }
    return [...entries, ...unknown];
  }

  /** The entries of one host's jobs among `ids` (their receives, if under way). */
  private async askHost(
    peer: Peer,
    ids: ReadonlyMap<string, ReceiveInfo | undefined>,
  ): Promise<[string, RemoteJobEntry][]> {
    const entries: [string, RemoteJobEntry][] = [];
    let jobs: readonly JobStatus[];
    try {
      const client = new PeerClient(peer, { timeoutMs: this.listTimeoutMs });
      ({ jobs } = await client.get<{ jobs: JobStatus[] }>('/v1/jobs'));
    } catch (error) {
      // Listed with what we know; remembered jobs of that host are left out this time only.
      for (const receive of ids.values()) {
        if (receive !== undefined) {
          const entry = unreachable(receive, peer.name, failureOf(error));
          entries.push([receive.id, { ...entry, id: this.jobIdOf(receive.id) }]);
        }
      }
      return entries;
    }
    // A receive is named by the move's journal id; the source's job has its own id (its `moveId`
    // is the journal's; a source of an older version used the journal id as the job id).
    const known = new Map(jobs.map((job) => [job.moveId ?? job.id, job]));
    for (const [id, receive] of ids) {
      const job = known.get(id);
      if (job !== undefined) {
        entries.push([id, { ...job, runsOn: peer.name }]);
        if (job.id !== id) this.alias(job.id, id);
      } else if (receive === undefined) {
        this.remembered.delete(id);
      } else {
        const entry = unreachable(receive, peer.name, notKnownError(peer, id));
        entries.push([id, { ...entry, id: this.jobIdOf(id) }]);
      }
    }
    return entries;
  }

  private async call(
    id: string,
    send: (client: PeerClient, path: string) => Promise<JobRecord>,
  ): Promise<RemoteJobRecord> {
    const route = await this.routeOf(id);
    try {
      const record = await send(new PeerClient(route.peer), jobPath(id));
      return { ...record, runsOn: route.peer.name };
    } catch (error) {
      const failure = relayed(error);
      // The host forgot a finished job: so do we, unless its disk is still arriving.
      if (errorCodeOf(failure) === JobErrorCode.NotFound && route.receive === undefined) {
        this.remembered.delete(id);
      }
      throw failure;
    }
  }

  /**
   * As `route`, but a job id not seen yet (the source names its jobs apart from the moves they
   * journal) is looked for by listing the sources' jobs once.
   */
  private async routeOf(id: string): Promise<Route> {
    try {
      return this.route(id);
    } catch (error) {
      if (errorCodeOf(error) !== JobErrorCode.NotFound) throw error;
      await this.list();
      return this.route(id);
    }
  }

  /** Where job `id` (or move `id`) runs; `ERR_JOB_NOT_FOUND` or `ERR_PEER_UNREACHABLE`. */
  private route(jobId: string): Route {
    const id = this.aliases.get(jobId) ?? jobId;
    const receive = this.options.receives().find((each) => each.id === id);
    if (receive !== undefined) {
      const peer = this.sourceOf(receive);
      if (peer === undefined)
        throw new HostError(HostErrorCode.PeerUnreachable, noSourceError(receive).message);
      this.remember(id, peer.name);
      return { peer, receive };
    }
    const name = this.remembered.get(id);
    const peer = name === undefined ? undefined : this.options.peers.get(name);
    if (peer === undefined) throw new JobError(JobErrorCode.NotFound, `no job ${jobId}`);
    return { peer, receive: undefined };
  }

  /** Remembers that the source's job `jobId` journals move `moveId`; as many as `remembered`. */
  private alias(jobId: string, moveId: string): void {
    this.aliases.delete(jobId);
    this.aliases.set(jobId, moveId);
    for (const oldest of this.aliases.keys()) {
      if (this.aliases.size <= REMEMBERED_MAX) break;
      this.aliases.delete(oldest);
    }
  }

  /** The source's job id of move `moveId` when a list said it; else the move id. */
  private jobIdOf(moveId: string): string {
    for (const [jobId, aliased] of this.aliases) if (aliased === moveId) return jobId;
    return moveId;
  }

  /** The peer that sends `receive` (see the rule above), or undefined. */
  private sourceOf(receive: ReceiveInfo): Peer | undefined {
    const named = this.options.peers.get(receive.from);
    if (named !== undefined) return named;
    const twins = this.options.peers
      .list()
      .filter((peer) => peer.key.identity === receive.pskIdentity);
    return twins.length === 1 ? twins[0] : undefined;
  }

  private remember(id: string, peerName: string): void {
    // Re-inserted, so the order stays oldest first by the time it was last seen under way.
    this.remembered.delete(id);
    this.remembered.set(id, peerName);
    for (const oldest of this.remembered.keys()) {
      if (this.remembered.size <= REMEMBERED_MAX) break;
      this.remembered.delete(oldest);
    }
  }
}

function jobPath(id: string): string {
  return `/v1/jobs/${encodeURIComponent(id)}`;
}

/**
 * The source's refusal as the source's own error, so it keeps its status and exit code (a job
 * in the wrong state is 409 here as there); failures to reach it stay PeerErrors (503 ...).
 */
function relayed(error: unknown): unknown {
  if (
    error instanceof PeerError &&
    error.code === HostErrorCode.PeerRefused &&
    error.remoteCode !== null &&
    error.remoteStatus !== null &&
    error.remoteStatus >= 400 &&
    error.remoteStatus < 500
  ) {
    return new FerryError(error.remoteCode, error.message, { cause: error });
  }
  return error;
}

function failureOf(error: unknown): UnreachableJob['error'] {
  return {
    code: errorCodeOf(error) ?? HostErrorCode.PeerUnreachable,
    message: errorMessageOf(error),
  };
}

function noSourceError(receive: ReceiveInfo): UnreachableJob['error'] {
  return {
    code: HostErrorCode.PeerUnreachable,
    message:
      `job ${receive.id} runs on host ${receive.from}, which this host knows neither by that ` +
      `name nor by its key identity ${receive.pskIdentity} alone; add it with ferry host add ` +
      `to follow the job here, or ask host ${receive.from}`,
  };
}

function notKnownError(peer: Peer, id: string): UnreachableJob['error'] {
  return {
    code: JobErrorCode.NotFound,
    message: `host ${peer.name} does not know job ${id} (restarted?); its disk is still arriving here`,
  };
}

function unreachable(
  receive: ReceiveInfo,
  runsOn: string | null,
  error: UnreachableJob['error'],
): UnreachableJob {
  return {
    id: receive.id,
    kind: 'migrate',
    disk: receive.disk,
    vm: null,
    disks: [receive.disk],
    runsOn,
    sourceHost: receive.from,
    to: receive.datastore,
    sizeBytes: receive.sizeBytes,
    state: 'running',
    progress: {
      doneBytes: receive.writtenBytes,
      totalBytes: Math.max(receive.sizeBytes, receive.writtenBytes),
      rateBytesPerSecond: 0,
      etaSeconds: null,
    },
    error,
  };
}
