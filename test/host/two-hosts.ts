import { randomBytes as cryptoRandomBytes } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/index.js';
import { JobManager } from '../../src/control/job-manager.js';
import { Agent } from '../../src/host/agent.js';
import { peerLinks } from '../../src/host/peer-link.js';
import { PeerRegistry } from '../../src/host/peers.js';
import type { PeerLink } from '../../src/host/remote-mover.js';
import { NbdServer } from '../../src/nbd/index.js';
import type { PskKey } from '../../src/nbd/psk-file.js';
import { makeTempDir } from './temp-dir.js';

/**
 * Two agents in one process, each with its own data directory, NBD server (accepting the shared
 * key over TLS) and API on loopback, knowing each other as hosts `a` and `b`: the in-process
 * fixture of the cross-host move tests. The network-namespace tests (test/cross-host) run the
 * same move between two real `ferry serve` processes.
 */
export interface TestHost {
  readonly name: string;
  readonly dataDir: string;
  agent: Agent;
  readonly server: NbdServer;
  readonly api: FastifyInstance;
  /** The API's jobs (`POST /v1/migrations`, `/v1/jobs`), over the host's current agent. */
  readonly jobs: JobManager;
  readonly peers: PeerRegistry;
  readonly nbdPort: number;
}

export interface TwoHosts {
  readonly a: TestHost;
  readonly b: TestHost;
  readonly key: PskKey;
  /** Reopens host `which`'s agent on the same data dir (after a simulated crash: `close` first). */
  reopen(which: 'a' | 'b', wrap?: PeerWrap): Promise<Agent>;
  close(): Promise<void>;
}

/** Lets a test stand between an agent and its peer (lose answers, refuse calls). */
export type PeerWrap = (link: PeerLink) => PeerLink;

export async function startTwoHosts(options: { wrapA?: PeerWrap } = {}): Promise<TwoHosts> {
  const key: PskKey = { identity: 'ferry-test', key: cryptoRandomBytes(32) };
  const dirA = await makeTempDir('ferry-host-a-');
  const dirB = await makeTempDir('ferry-host-b-');
  const peersA = await PeerRegistry.load(dirA);
  const peersB = await PeerRegistry.load(dirB);
  const b = await startHost('b', dirB, peersB, key);
  const a = await startHost('a', dirA, peersA, key, options.wrapA);
  await peersA.add({ name: 'b', url: urlOf(b.api), key });
  await peersB.add({ name: 'a', url: urlOf(a.api), key });
  const hosts = { a, b };
  return {
    a,
    b,
    key,
    async reopen(which, wrap) {
      const host = hosts[which];
      host.agent = await Agent.open(agentOptions(host.name, host.dataDir, host.peers, wrap));
      return host.agent;
    },
    async close() {
      for (const host of [a, b]) {
        await host.jobs.shutdown();
        // A relayed event stream's connection to the other host is idle for fetch, not closed.
        host.api.server.closeAllConnections();
        await host.api.close();
        await host.server.close();
        await host.agent.close().catch(() => undefined);
      }
    },
  };
}

function agentOptions(name: string, dataDir: string, peers: PeerRegistry, wrap?: PeerWrap) {
  const links = peerLinks(peers);
  return {
    dataDir,
    hostName: name,
    peerLink: (peer: string) => {
      const link = links(peer);
      return link === undefined || wrap === undefined ? link : wrap(link);
    },
  };
}

/**
 * The agent the API sees: always the host's current one, so a test that reopens an agent (after
 * closing it, as a crash would) keeps the same API and NBD server in front of it.
 */
function currentAgent(host: TestHost): Agent {
  return new Proxy({} as Agent, {
    get: (_target, property) => {
      const value: unknown = Reflect.get(host.agent, property);
      return typeof value === 'function' ? value.bind(host.agent) : value;
    },
  });
}

async function startHost(
  name: string,
  dataDir: string,
  peers: PeerRegistry,
  key: PskKey,
  wrap?: PeerWrap,
): Promise<TestHost> {
  const agent = await Agent.open(agentOptions(name, dataDir, peers, wrap));
  const host = { name, dataDir, agent, peers } as TestHost;
  const server = new NbdServer({
    exports: {
      lookup: (exportName, access) => host.agent.exports.lookup(exportName, access),
      list: (access) => host.agent.exports.list(access),
    },
    tls: {
      mode: 'allow',
      pskKeyFor: (identity) => (identity === key.identity ? key.key : undefined),
    },
  });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  const jobs = new JobManager(currentAgent(host), { progressIntervalMs: 50 });
  const api = createApi({
    agent: currentAgent(host),
    nbdUrl: `nbd://127.0.0.1:${port}`,
    peers,
    hostName: name,
    jobs,
  });
  await api.listen({ host: '127.0.0.1', port: 0 });
  Object.assign(host, { server, api, jobs, nbdPort: port });
  return host;
}

function urlOf(api: FastifyInstance): string {
  const address = api.server.address() as AddressInfo;
  return `http://127.0.0.1:${address.port}`;
}
