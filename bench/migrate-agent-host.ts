import type { MoveDiskRequest } from '../src/host/agent.js';
import { Agent } from '../src/host/agent.js';
import type { MigrationEvent } from '../src/migrate/migration.js';
import { NbdServer } from '../src/nbd/index.js';
import { errorMessageOf } from '../src/util/errors.js';
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
 * goes away.
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
      return move(request.request);
  }
}

/** Runs one move to its end, stamping each event with the time it came. */
async function move(request: MoveDiskRequest): Promise<MoveReport> {
  const events: { atMs: number; event: MigrationEvent }[] = [];
  let dirtyAtSwitchoverBytes: number | null = null;
  let dirtyNow = (): number | null => null;
  const diskMove = await agent.moveDisk(request, (event) => {
    // The runner announces the switchover before its pre-flush and pause: what the method
    // still holds then is what the final copy will copy (plus the writes of the pre-flush).
    if (event.type === 'phase' && event.phase === 'switchover') dirtyAtSwitchoverBytes = dirtyNow();
    events.push({ atMs: Date.now(), event });
  });
  dirtyNow = () => diskMove.migration.dirtyBytes;
  try {
    const result = await diskMove.done;
    return { result, error: null, events, dirtyAtSwitchoverBytes };
  } catch (error) {
    return { result: null, error: errorMessageOf(error), events, dirtyAtSwitchoverBytes };
  }
}

let isStopping = false;
async function stop(): Promise<void> {
  if (isStopping) return;
  isStopping = true;
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
