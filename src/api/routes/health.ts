import type { FastifyInstance } from 'fastify';
import type { Agent } from '../../host/agent.js';
import type { NbdAddress } from '../disk-view.js';

/**
 * `GET /v1/health`: answers while the process serves. Also says where NBD listens (so a script
 * that started `ferry serve` on port 0 can find it), what the agent skipped, and which host and
 * version this is (peers show it in `ferry host list`).
 */
export function registerHealthRoutes(
  app: FastifyInstance,
  agent: Agent,
  nbd: NbdAddress,
  self: { readonly host: string; readonly version: string },
): void {
  app.get('/v1/health', async () => ({
    status: 'ok',
    host: self.host,
    version: self.version,
    dataDir: agent.dataDir,
    nbdUrl: nbd.url,
    nbdSocket: nbd.socketPath ?? null,
    disks: agent.exports.all().length,
    warnings: agent.warnings,
  }));
}
