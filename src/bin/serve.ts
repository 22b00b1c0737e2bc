import { mkdir, realpath } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import type { Logger as PinoLogger } from 'pino';
import { createApi } from '../api/index.js';
import { formatHostPort } from '../cli/host-port.js';
import type { ServeOptions } from '../cli/serve-command.js';
import { DATABASE_FILE, type Database, openDatabase } from '../control/database.js';
import { JobManager } from '../control/index.js';
import { Inventory } from '../control/inventory.js';

/** How often the inventory in ferry.db catches up with disks added or removed through the API. */
const INVENTORY_REFRESH_MS = 10_000;

import {
  CRASH_POINTS,
  type CrashPoint,
  RECEIVE_CRASH_POINTS,
  RELEASE_CRASH_POINTS,
  VM_CRASH_POINTS,
} from '../host/disk-mover.js';
import { Agent, checkName, PeerRegistry } from '../host/index.js';
import { peerLinks } from '../host/peer-link.js';
import { NbdServer } from '../nbd/index.js';
import { loadServerTls, parseTlsSpec } from '../nbd/tls-credentials.js';
import { errorMessageOf } from '../util/errors.js';
import { readPackageVersion } from '../util/package-version.js';

export { createServeLogger } from './serve-logger.js';

/**
 * `ferry serve`: the wiring of one process holding the agent, the NBD server and the API.
 *
 *   Agent.open (locks the data dir, opens every disk)
 *     → PeerRegistry.load (the other hosts and their keys, from the same data dir)
 *     → NbdServer over the agent's export table (removing a disk drops its connections)
 *     → NBD listens on TCP (and a Unix socket), and on the local socket of this host's guests
 *     → the API listens, admitting the peers' keys
 *     → log "ready" with the bound addresses (port 0 in tests: this is how they find them)
 *
 * On SIGINT/SIGTERM: stop the API (no new changes; event streams end), cancel the running jobs
 * and wait for their rollbacks (each guest stays on its source), close the NBD server (requests
 * in flight finish, connections close), close the agent (flushes and closes every disk), exit 0. A second
 * signal exits at once, for the operator whose flush hangs on a dead NFS server.
 */
export async function serve(options: ServeOptions, log: PinoLogger): Promise<number> {
  checkName(options.hostName, 'host');
  const signals = watchSignals(log);
  let server: NbdServer | undefined;
  // The other hosts and their keys (issue 7), before the agent: its recovery may have to ask a
  // peer how an interrupted cross-host move ended. They also admit peers' API calls and NBD
  // TLS-PSK connections.
  const peers = await PeerRegistry.load(await dataDirPath(options.dataDir));
  const agent = await Agent.open({
    dataDir: options.dataDir,
    log: log.child({ component: 'agent' }),
    dropExport: async (name) => server?.dropExport(name),
    hostName: options.hostName,
    peerLink: peerLinks(peers),
    peerKeyFor: (identity) => peers.keyFor(identity),
    ...crashPointFromEnv(log),
  });
  try {
    await ensureDisks(agent, options.ensureDisks, log);
  } catch (error) {
    await agent.close();
    signals.dispose();
    throw error;
  }
  // TLS-PSK is always on for the peer hosts' keys (agent-to-agent data is always TLS); the
  // user's --tls adds its own keys or certificates and, by default, forces TLS on everyone.
  const nbdTls = await loadServerTls(
    options.tls === undefined ? undefined : parseTlsSpec(options.tls),
    options.tlsMode,
    (identity) => peers.keyFor(identity),
  ).catch(async (error: unknown) => {
    await agent.close();
    signals.dispose();
    throw error;
  });
  // The inventory and job history (control/database.ts); the datastores stay the authority.
  const db = openDatabase(join(agent.dataDir, DATABASE_FILE));
  server = new NbdServer({
    exports: agent.exports,
    log: log.child({ component: 'nbd' }),
    tls: nbdTls.tls,
  });
  const jobs = new JobManager(agent, {
    db,
    ...(options.limits === undefined ? {} : { limits: options.limits }),
    log: log.child({ component: 'jobs' }),
  });
  const nbdServer = server;
  let api: ReturnType<typeof createApi> | undefined;
  let stopInventory = (): void => {};
  try {
    // Ends or resumes the jobs the last process left running; lets the queued ones start.
    await jobs.recover();
    // The inventory tables, rebuilt from the agent (the datastores are the authority).
    const inventory = new Inventory(db, agent, {
      hostName: options.hostName,
      peers: () => peers.list(),
    });
    await inventory.refresh();
    stopInventory = inventory.follow(
      jobs,
      INVENTORY_REFRESH_MS,
      log.child({ component: 'inventory' }),
    );
    const nbd = await nbdServer.listenTcp(options.nbd.host, options.nbd.port);
    if (options.socketPath !== undefined) await nbdServer.listenUnix(options.socketPath);
    // This host's QEMU guests reach their disks here (vm-runtime.ts).
    await nbdServer.listenUnix(agent.nbdSocket, { isLocal: true });
    const nbdUrl = `nbd://${formatHostPort(nbd)}`;
    api = createApi({
      agent,
      db,
      jobs,
      nbdUrl,
      peers,
      hostName: options.hostName,
      version: readPackageVersion(),
      ...(options.socketPath === undefined ? {} : { nbdSocketPath: options.socketPath }),
      log: log.child({ component: 'api' }),
    });
    await api.listen({ host: options.api.host, port: options.api.port });
    const bound = api.server.address() as AddressInfo;
    const apiUrl = `http://${formatHostPort({ host: bound.address, port: bound.port })}`;
    log.info(
      {
        host: options.hostName,
        dataDir: agent.dataDir,
        nbdUrl,
        nbdHost: nbd.host,
        nbdPort: nbd.port,
        nbdSocket: options.socketPath ?? null,
        nbdTls: nbdTls.label,
        apiUrl,
        apiHost: bound.address,
        apiPort: bound.port,
        disks: agent.exports.all().length,
        peers: peers.list().length,
      },
      'ready',
    );
  } catch (error) {
    stopInventory();
    await shutdown(log, api, jobs, nbdServer, agent, db);
    signals.dispose();
    throw error;
  }
  const signal = await signals.first;
  log.info({ signal }, 'stopping');
  stopInventory();
  const code = await shutdown(log, api, jobs, nbdServer, agent, db);
  signals.dispose();
  log.info({ code }, 'stopped');
  return code;
}

/** The data directory, created if missing, as the agent will name it (its real path). */
async function dataDirPath(dataDir: string): Promise<string> {
  await mkdir(dataDir, { recursive: true });
  return realpath(resolve(dataDir));
}

/** `--disk NAME:SIZE`: create what is missing; an existing disk is served as it is. */
async function ensureDisks(
  agent: Agent,
  wishes: ServeOptions['ensureDisks'],
  log: PinoLogger,
): Promise<void> {
  for (const wish of wishes) {
    if (agent.exports.has(wish.name)) {
      const existing = await agent.getDisk(wish.name);
      if (existing.sizeBytes !== wish.sizeBytes) {
        log.warn(
          { disk: wish.name, sizeBytes: existing.sizeBytes, askedBytes: wish.sizeBytes },
          'disk exists with another size; serving it as it is',
        );
      }
      continue;
    }
    await agent.createDisk({ name: wish.name, sizeBytes: wish.sizeBytes });
  }
}

/** Stops everything in order; resolves 0, or 1 if something failed (already logged). */
async function shutdown(
  log: PinoLogger,
  api: ReturnType<typeof createApi> | undefined,
  jobs: JobManager,
  server: NbdServer,
  agent: Agent,
  db: Database,
): Promise<number> {
  let code = 0;
  const step = async (what: string, action: () => Promise<unknown>): Promise<void> => {
    try {
      await action();
    } catch (error) {
      code = 1;
      log.error({ err: error }, `${what} failed: ${errorMessageOf(error)}`);
    }
  };
  agent.stopWaitingForPeers();
  if (api) await step('closing the API', () => api.close());
  // Before the agent closes the disks: each running move rolls back to its source.
  await step('cancelling the jobs', () => jobs.shutdown());
  await step('closing the NBD server', () => server.close());
  await step('closing the agent', () => agent.close());
  await step('closing the database', async () => db.close());
  return code;
}

interface SignalWatch {
  /** Resolves with the first SIGINT or SIGTERM. */
  readonly first: Promise<NodeJS.Signals>;
  dispose(): void;
}

function watchSignals(log: PinoLogger): SignalWatch {
  let count = 0;
  let resolveFirst: (signal: NodeJS.Signals) => void = () => {};
  const first = new Promise<NodeJS.Signals>((resolve) => {
    resolveFirst = resolve;
  });
  const onSignal = (signal: NodeJS.Signals): void => {
    count += 1;
    if (count === 1) {
      resolveFirst(signal);
      return;
    }
    log.warn({ signal }, 'second signal: exiting without finishing the shutdown');
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    first,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

/**
 * `FERRY_CRASH_AT=<point>`: a test seam for the crash tests (issue 3), never for production: every
 * disk move kills this process with SIGKILL at that point (see host/disk-mover.ts).
 */
function crashPointFromEnv(log: PinoLogger): { crashAt?: CrashPoint } {
  const value = process.env.FERRY_CRASH_AT;
  if (value === undefined || value === '') return {};
  const points: readonly string[] = [
    ...CRASH_POINTS,
    ...RELEASE_CRASH_POINTS,
    ...RECEIVE_CRASH_POINTS,
    ...VM_CRASH_POINTS,
  ];
  if (!points.includes(value)) {
    throw new Error(`FERRY_CRASH_AT=${value}: expected one of ${points.join(', ')}`);
  }
  log.warn({ crashAt: value }, 'FERRY_CRASH_AT is set: every disk move will kill this process');
  return { crashAt: value as CrashPoint };
}
