import { hostname } from 'node:os';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import { ClusterStore } from '../control/clusters.js';
import type { Database } from '../control/database.js';
import { DrsService } from '../control/drs-service.js';
import type { JobManager } from '../control/job-manager.js';
import { RemoteJobs } from '../control/remote-jobs.js';
import { TokenStore } from '../control/token-store.js';
import type { Agent } from '../host/agent.js';
import type { PeerRegistry } from '../host/peers.js';
import { readPackageVersion } from '../util/package-version.js';
import { registerDashboardRoutes } from '../web/index.js';
import { registerPeerAuth } from './auth.js';
import type { NbdAddress } from './disk-view.js';
import { replyError } from './error-reply.js';
import { ApiErrorCode } from './error-table.js';
import { registerOpenApi } from './openapi.js';
import { registerClusterRoutes } from './routes/clusters.js';
import { registerDatastoreRoutes } from './routes/datastores.js';
import { registerDiskRoutes } from './routes/disks.js';
import { registerDrsRoutes } from './routes/drs.js';
import { registerHealthRoutes } from './routes/health.js';
import { registerHostRoutes } from './routes/hosts.js';
import { registerJobEventRoutes } from './routes/job-events.js';
import { registerJobRoutes } from './routes/jobs.js';
import { registerMetricsRoute } from './routes/metrics.js';
import { registerReceiveRoutes } from './routes/receives.js';
import { registerStatsEventRoutes } from './routes/stats-events.js';
import { registerTokenRoutes } from './routes/tokens.js';
import { registerVmReceiveRoutes } from './routes/vm-receives.js';
import { registerVmRoutes } from './routes/vms.js';

export interface ApiOptions {
  readonly agent: Agent;
  /** The control plane's store (control/database.ts); routes that keep state there need it. */
  readonly db?: Database;
  /** Where the NBD server listens, `nbd://HOST:PORT`; disk replies carry `<nbdUrl>/<disk>`. */
  readonly nbdUrl: string;
  readonly nbdSocketPath?: string;
  /** Migrations and the other jobs; without it the job routes are not served. */
  readonly jobs?: JobManager;
  /** Interval of the event streams' heartbeat comments; default 15 s. */
  readonly eventHeartbeatMs?: number;
  /**
   * The other hosts this agent knows: their keys admit their calls (api/auth.ts), and the host
   * routes are served. Without it, only loopback callers get in and there are no host routes.
   */
  readonly peers?: PeerRegistry;
  /** The name this host gives itself (`ferry serve --name`); default `os.hostname()`. */
  readonly hostName?: string;
  /** Reported by `/v1/health`; default package.json's. */
  readonly version?: string;
  /** Request errors with status 500 are logged here; requests themselves are not. */
  readonly log?: FastifyBaseLogger;
}

/** Largest request body: bodies are a few names and paths. */
const BODY_LIMIT_BYTES = 64 * 1024;

/**
 * The HTTP+JSON API under `/v1`. Returns a Fastify instance that is not listening: the entry
 * calls `listen`, tests call `listen({ port: 0 })` or `inject`.
 */
export function createApi(options: ApiOptions): FastifyInstance {
  const app = Fastify({
    ...(options.log === undefined ? {} : { loggerInstance: options.log }),
    // The agent logs every change itself; a line per request would drown them.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT_BYTES,
    // Refuse unknown properties instead of dropping them, and never coerce: `"name": 5` is a
    // mistake to report, not a name to invent.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false } },
  });
  const nbd: NbdAddress = {
    url: options.nbdUrl.replace(/\/+$/, ''),
    ...(options.nbdSocketPath === undefined ? {} : { socketPath: options.nbdSocketPath }),
  };
  app.setErrorHandler((error, request, reply) => replyError(error, request, reply));
  app.setNotFoundHandler((request, reply) =>
    reply.status(404).send({
      error: {
        code: ApiErrorCode.NoRoute,
        message: `no route ${request.method} ${request.url}; GET /v1/openapi.json lists the routes`,
      },
    }),
  );
  const peers = options.peers;
  // API tokens live in the control plane's store; without one, only loopback and peers get in.
  const tokens = options.db === undefined ? undefined : new TokenStore(options.db);
  // First: every route, including the 404 handler, is behind the credential check.
  registerPeerAuth(app, {
    keyFor: (identity) => peers?.keyFor(identity),
    ...(tokens === undefined ? {} : { tokenName: (token: string) => tokens.verify(token) }),
  });
  const version = options.version ?? readPackageVersion();
  // Before the routes: it collects them as they are added.
  registerOpenApi(app, version);
  registerHealthRoutes(app, options.agent, nbd, {
    host: options.hostName ?? hostname(),
    version,
  });
  if (tokens) registerTokenRoutes(app, tokens);
  registerMetricsRoute(app, options.agent, options.jobs);
  if (peers) registerHostRoutes(app, peers);
  // Clusters, Storage DRS and maintenance keep their state in the database (control/clusters.ts).
  const drs =
    options.db &&
    new DrsService(options.agent, new ClusterStore(options.db), options.jobs, { log: app.log });
  registerDatastoreRoutes(app, options.agent, drs);
  registerDiskRoutes(app, options.agent, nbd, drs);
  if (drs) {
    registerClusterRoutes(app, drs);
    registerDrsRoutes(app, drs);
  }
  registerVmRoutes(app, options.agent);
  registerStatsEventRoutes(
    app,
    options.agent,
    options.eventHeartbeatMs === undefined ? {} : { heartbeatMs: options.eventHeartbeatMs },
  );
  registerDashboardRoutes(app);
  // A move from another host takes this host's migration slots too (control/scheduler.ts).
  const jobs = options.jobs;
  const admit =
    jobs === undefined
      ? undefined
      : (id: string, datastores: readonly string[]) => jobs.admitReceive(id, datastores);
  const nbdPort = Number(new URL(nbd.url).port || 10809);
  registerReceiveRoutes(app, options.agent, nbdPort, admit);
  registerVmReceiveRoutes(app, options.agent, nbdPort, admit);
  if (options.jobs) {
    // The destination of a cross-host move shows the source's job of it (remote-jobs.ts).
    const agent = options.agent;
    const remote =
      peers === undefined
        ? undefined
        : new RemoteJobs({ receives: () => agent.receiver.list(), peers });
    registerJobRoutes(app, options.jobs, remote);
    registerJobEventRoutes(
      app,
      options.jobs,
      options.eventHeartbeatMs === undefined ? {} : { heartbeatMs: options.eventHeartbeatMs },
      remote,
    );
  }
  return app;
}
