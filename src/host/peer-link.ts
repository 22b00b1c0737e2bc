import { PeerClient } from './peer-client.js';
import type { PeerRegistry } from './peers.js';
import type { PeerLink } from './remote-mover.js';

/**
 * What a cross-host move needs of a peer, from the registry of known hosts: its API (signed
 * calls), where its NBD server listens, and the key agent-to-agent NBD proves over TLS. The NBD
 * server is on the host of the peer's API URL, at the port the peer reports in `/v1/health`
 * (asked each time a connection is made: a peer that restarted may listen elsewhere).
 */
export function peerLinks(registry: PeerRegistry): (name: string) => PeerLink | undefined {
  return (name) => {
    const peer = registry.get(name);
    if (peer === undefined) return undefined;
    const client = new PeerClient(peer);
    return {
      name: peer.name,
      nbdHost: new URL(peer.url).hostname.replace(/^\[(.*)\]$/, '$1'),
      psk: peer.key,
      post: (path, body, options) => client.post(path, body, options),
      nbdPort: async () => {
        const health = await client.get<{ nbdUrl?: string }>('/v1/health', { timeoutMs: 5000 });
        const port = Number(new URL(health.nbdUrl ?? 'nbd://invalid').port || 10809);
        if (!Number.isSafeInteger(port) || port <= 0) {
          throw new Error(`host ${name} reports no NBD address (${health.nbdUrl})`);
        }
        return port;
      },
    };
  };
}
