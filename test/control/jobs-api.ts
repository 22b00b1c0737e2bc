import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { FastifyInstance } from 'fastify';
import { createApi } from '../../src/api/app.js';
import { JobManager } from '../../src/control/job-manager.js';
import { Agent } from '../../src/host/agent.js';
import { FakeAgent } from './fake-agent.js';

const MIB = 1024 * 1024;

/**
 * The real API on port 0 whose job manager moves the disks of a fake agent (fake-agent.ts) with
 * real migrations: disks `vm1`..`vmN` of 1 MiB in datastore `local`, and `fast` to move them to.
 * The API's own agent (for the disk and datastore routes) is a real one on a temporary directory.
 */
export interface JobsApi {
  /** The API's real agent, and its data directory (also a scratch directory for the test). */
  readonly agent: Agent;
  readonly dataDir: string;
  readonly fake: FakeAgent;
  readonly jobs: JobManager;
  readonly app: FastifyInstance;
  readonly url: string;
  close(): Promise<void>;
}

export async function startJobsApi(
  diskCount: number,
  options: { readonly eventHeartbeatMs?: number } = {},
): Promise<JobsApi> {
  const dataDir = await mkdtemp(join(tmpdir(), 'ferry-jobs-api-test-'));
  const agent = await Agent.open({ dataDir });
  const disks: Record<string, { datastore: string; sizeBytes: number }> = {};
  for (let i = 1; i <= diskCount; i += 1) disks[`vm${i}`] = { datastore: 'local', sizeBytes: MIB };
  const fake = new FakeAgent(['local', 'fast'], disks);
  const jobs = new JobManager(fake, { progressIntervalMs: 10 });
  const app = createApi({ agent, nbdUrl: 'nbd://127.0.0.1:10809', jobs, ...options });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  return {
    agent,
    dataDir,
    fake,
    jobs,
    app,
    url,
    close: async () => {
      await jobs.shutdown();
      // fetch (undici) replaces a connection whose body the client cancelled with a fresh idle
      // one it keeps for 4 s, and a server waits for connections that never sent a request.
      app.server.closeAllConnections();
      await app.close();
      await agent.close();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
