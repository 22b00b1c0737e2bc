import type { FastifyInstance } from 'fastify';
import { HostError, HostErrorCode } from '../../host/errors.js';
import { PeerClient, PeerError } from '../../host/peer-client.js';
import { CredentialFailure } from '../../host/peer-credential.js';
import type { Peer, PeerRegistry } from '../../host/peers.js';
import { type PskKey, parsePskFile } from '../../nbd/psk-file.js';
import { errorMessageOf } from '../../util/errors.js';
import {
  type AddHostBody,
  addHostBodySchema,
  type NameParams,
  nameParamsSchema,
} from '../schemas.js';

/**
 * `/v1/hosts`: the other hosts this agent knows (issue 7), each shown with what it says of
 * itself right now. Every status is gathered live, all peers in parallel, each bounded by the
 * probe timeout, so one dead host costs a listing that much and no more.
 */
export const PROBE_TIMEOUT_MS = 3_000;

export interface HostDatastoreView {
  readonly name: string;
  readonly freeBytes: number | null;
  readonly capacityBytes: number | null;
}

export interface HostView {
  readonly name: string;
  readonly url: string;
  readonly identity: string;
  /** The peer's agent answered (even if only to refuse our credential). */
  readonly reachable: boolean;
  /** The peer's Ferry version; null unless it answered us. */
  readonly version: string | null;
  /** The name the peer gives itself (`ferry serve --name`); null unless it answered us. */
  readonly host: string | null;
  readonly datastores: readonly HostDatastoreView[] | null;
  /** Why some of the above is missing; null when all is well. */
  readonly error: string | null;
}

export interface HostRouteOptions {
  /** Bound of each status call to a peer; default PROBE_TIMEOUT_MS. */
  readonly probeTimeoutMs?: number;
}

interface PeerHealth {
  readonly host?: string;
  readonly version?: string;
}

interface PeerDatastores {
  readonly datastores: readonly HostDatastoreView[];
}

interface Probe {
  readonly view: HostView;
  /** The error of the health call, when it failed. */
  readonly failure: PeerError | undefined;
}

export function registerHostRoutes(
  app: FastifyInstance,
  peers: PeerRegistry,
  options: HostRouteOptions = {},
): void {
  const timeoutMs = options.probeTimeoutMs ?? PROBE_TIMEOUT_MS;

  app.get('/v1/hosts', async () => ({
    hosts: await Promise.all(
      peers.list().map(async (peer) => (await probePeer(peer, timeoutMs)).view),
    ),
  }));

  app.get<{ Params: NameParams }>(
    '/v1/hosts/:name',
    { schema: { params: nameParamsSchema } },
    async (request) => (await probePeer(peers.require(request.params.name), timeoutMs)).view,
  );

  app.post<{ Body: AddHostBody }>(
    '/v1/hosts',
    { schema: { body: addHostBodySchema } },
    async (request, reply) => {
      const key = parseKeyLine(request.body.key);
      const candidate: Peer = {
        name: request.body.name,
        url: peers.check({ ...request.body, key }),
        key,
      };
      const probe = await probePeer(candidate, timeoutMs);
      // Unreachable is accepted (the peer may start later), and so is a peer that does not know
      // our identity yet (hosts add each other one after the other). Keys or clocks that
      // disagree would fail every call: refuse now, while the operator is looking.
      if (
        probe.failure?.code === HostErrorCode.PeerUnauthorized &&
        probe.failure.authFailure !== CredentialFailure.UnknownIdentity
      ) {
        throw probe.failure;
      }
      await peers.add({ name: candidate.name, url: candidate.url, key });
      return reply.status(201).send(probe.view);
    },
  );

  app.delete<{ Params: NameParams }>(
    '/v1/hosts/:name',
    { schema: { params: nameParamsSchema } },
    async (request, reply) => {
      await peers.remove(request.params.name);
      return reply.status(204).send();
    },
  );
}

/** Asks the peer's health and datastores at once; never rejects. */
async function probePeer(peer: Peer, timeoutMs: number): Promise<Probe> {
  const client = new PeerClient(peer, { timeoutMs });
  const [health, stores] = await Promise.allSettled([
    client.get<PeerHealth>('/v1/health'),
    client.get<PeerDatastores>('/v1/datastores'),
  ]);
  const base = { name: peer.name, url: peer.url, identity: peer.key.identity };
  if (health.status === 'rejected') {
    const failure = health.reason instanceof PeerError ? health.reason : undefined;
    return {
      view: {
        ...base,
        reachable: failure !== undefined && failure.code !== HostErrorCode.PeerUnreachable,
        version: null,
        host: null,
        datastores: null,
        error: errorMessageOf(health.reason),
      },
      failure,
    };
  }
  return {
    view: {
      ...base,
      reachable: true,
      version: health.value.version ?? null,
      host: health.value.host ?? null,
      datastores:
        stores.status === 'fulfilled'
          ? stores.value.datastores.map((d) => ({
              name: d.name,
              freeBytes: d.freeBytes,
              capacityBytes: d.capacityBytes,
            }))
          : null,
      error: stores.status === 'rejected' ? errorMessageOf(stores.reason) : null,
    },
    failure: undefined,
  };
}

/** The posted key: exactly one psktool line; `ERR_BAD_KEY` otherwise. */
function parseKeyLine(text: string): PskKey {
  let keys: PskKey[];
  try {
    keys = parsePskFile(text, 'the key');
  } catch (error) {
    throw new HostError(HostErrorCode.BadKey, errorMessageOf(error), { cause: error });
  }
  const [key] = keys;
  if (key === undefined || keys.length > 1) {
    throw new HostError(
      HostErrorCode.BadKey,
      'give one key line IDENTITY:HEXKEY (the CLI picks one from a key file with --identity)',
    );
  }
  return key;
}
