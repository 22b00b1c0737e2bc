import type { MoveDiskRequest } from '../src/host/agent.js';
import { Agent } from '../src/host/agent.js';
import type { MigrationEvent } from '../src/migrate/migration.js';
import { NbdServer } from '../src/nbd/index.js';
import { errorMessageOf } from '../src/util/errors.js';
import { type HostWaits, type LatencyCount, meanBetween, WaitProbes } from './host-waits.js';
import type { AgentReply, AgentRequest, MoveReport } from './migrate-ferry-agent.js';

/**
 * The benchmark's in-process Ferry (the `agent` driver, see migrate-ferry.ts): `ferry serve`'s
 * Agent and NBD server without the API, driven by the parent over Node's IPC channel, so a move
 * can take method tuning and report what the API does not. Run by the parent only:
 *
 *   node dist/bench/migrate-agent-host.js DATA_DIR
 *
 * Sends `{type: 'ready', nbdPort}` once serving on 127.0.0.1 (a free port), answers each request
 * with one reply of the same id, and exits, flushing every disk, on SIGTERM or when the parent
 * goes away. Each move reports where the guest waited in this process (host-waits.ts) during the
 * move and, when asked, over a window of the same probes just before it.
 */
const [dataDir] = process.argv.slice(2);
if (dataDir === undefined || process.send === undefined) {
  process.stderr.write('usage: node migrate-agent-host.js DATA_DIR (as a child with IPC)\n');
  process.exit(2);
}

let server: NbdServer | undefined;
const agent = await Agent.open({
  dataDir,
  dropExport: async (name) => server?.dropExport(name),
});
server = new NbdServer({ exports: agent.exports });
const probes = await WaitProbes.open(process.execPath);
const { port } = await server.listenTcp('127.0.0.1', 0);

const send = (message: AgentReply | { type: 'ready'; nbdPort: number }): void => {
  process.send?.(message);
};

async function handle(request: AgentRequest): Promise<unknown> {
  switch (request.op) {
    case 'addDatastore':
      return agent.addDatastore(request.name, request.path);
    case 'importDisk':
      return agent.importDisk({
        name: request.name,
        file: request.file,
        datastore: request.datastore,
      });
    case 'move':
      return move(request.request, request.waitsBaselineMs ?? 0);
  }
}

/**
 * Runs one move to its end, stamping each event with the time it came; first, with
 * `baselineMs` > 0, samples the wait probes that long with the guest alone.
 */
async function move(request: MoveDiskRequest, baselineMs: number): Promise<MoveReport> {
  const writesNow = (): LatencyCount => {
    const { operations, latency } = agent.diskStats(request.name).verbs.write;
    return { operations, latencySumUs: latency.meanUs * operations };
  };
  const writesAtBaseline = writesNow();
  const before = baselineMs > 0 ? await probes.sample(baselineMs) : null;
  const writesAtStart = writesNow();
  let writesAtSwitchover: LatencyCount | undefined;
  const events: { atMs: number; event: MigrationEvent }[] = [];
  let dirtyAtSwitchoverBytes: number | null = null;
  let dirtyNow = (): number | null => null;
  const startedAtMs = Date.now();
  probes.start();
  let diskMove: Awaited<ReturnType<typeof agent.moveDisk>>;
  try {
    diskMove = await agent.moveDisk(request, (event) => {
      // The runner announces the switchover before its pre-flush and pause: what the method
      // still holds then is what the final copy will copy (plus the writes of the pre-flush).
      if (event.type === 'phase' && event.phase === 'switchover') {
        dirtyAtSwitchoverBytes = dirtyNow();
        writesAtSwitchover = writesNow();
      }
      events.push({ atMs: Date.now(), event });
    });
  } catch (error) {
    probes.stop();
    throw error;
  }
  const { migration } = diskMove;
  dirtyNow = () => migration.dirtyBytes;
  const report = { startedAtMs, events };
  const waitsOf = (): HostWaits => {
    const during = probes.stop();
    const lock = migration.mirrorStats;
    const guest = migration.guestLatency;
    return {
      before,
      during,
      lock:
        lock === undefined
          ? null
          : { acquires: lock.lockAcquires, waits: lock.lockWaits, waitMs: lock.lockWaitMs },
      guestInStack: meanBetween(NONE, guest),
      targetRequests: meanBetween(NONE, migration.targetLatency),
      sourceWrite: {
        before: before === null ? null : meanBetween(writesAtBaseline, writesAtStart),
        during: meanBetween(writesAtStart, writesAtSwitchover ?? writesNow()),
      },
    };
  };
  try {
    const result = await diskMove.done;
    return { ...report, result, error: null, dirtyAtSwitchoverBytes, waits: waitsOf() };
  } catch (error) {
    const message = errorMessageOf(error);
    return { ...report, result: null, error: message, dirtyAtSwitchoverBytes, waits: waitsOf() };
  }
}

const NONE: LatencyCount = { operations: 0, latencySumUs: 0 };

let isStopping = false;
async function stop(): Promise<void> {
  if (isStopping) return;
  isStopping = true;
  probes.close();
  await server?.close();
  await agent.close();
  process.exit(0);
}

process.on('message', (message: AgentRequest) => {
  handle(message).then(
    (value) => send({ type: 'reply', id: message.id, value, error: null }),
    (error: unknown) =>
      send({ type: 'reply', id: message.id, value: null, error: errorMessageOf(error) }),
  );
});
process.once('disconnect', () => void stop());
process.once('SIGTERM', () => void stop());
process.once('SIGINT', () => void stop());
send({ type: 'ready', nbdPort: port });
