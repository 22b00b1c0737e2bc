import { join } from 'node:path';
import type { MoveDiskRequest, MoveResult } from '../src/host/agent.js';
import type { MigrationEvent } from '../src/migrate/migration.js';
import { type Child, spawnChild, stopChild } from './children.js';
import type { HostWaits } from './host-waits.js';
import type { FerryHost, MoveOutcome, MoveSpec, StunBreakdown } from './migrate-ferry.js';
import { step } from './migrate-step.js';
import { REPO_ROOT } from './servers.js';

/**
 * The `agent` driver (see migrate-ferry.ts): starts migrate-agent-host.js as a child with an IPC
 * channel and asks it, one message per operation, to add datastores, import disks and move them.
 */
export type AgentOperation =
  | { readonly op: 'addDatastore'; readonly name: string; readonly path: string }
  | {
      readonly op: 'importDisk';
      readonly name: string;
      readonly file: string;
      readonly datastore: string;
    }
  | {
      readonly op: 'move';
      readonly request: MoveDiskRequest;
      /** Sample the host's wait probes this long before the move (0 or absent: do not). */
      readonly waitsBaselineMs?: number;
    };

export type AgentRequest = AgentOperation & { readonly id: number };

export interface AgentReply {
  readonly type: 'reply';
  readonly id: number;
  readonly value: unknown;
  readonly error: string | null;
}

/** What the host answers to `move`, once the move is over either way. */
export interface MoveReport {
  /** Date.now() in the host when the move was asked of the agent (after the baseline). */
  readonly startedAtMs: number;
  readonly result: MoveResult | null;
  readonly error: string | null;
  readonly events: readonly { readonly atMs: number; readonly event: MigrationEvent }[];
  readonly dirtyAtSwitchoverBytes: number | null;
  /** Where the guest waited in the host, before and during the move (host-waits.ts). */
  readonly waits: HostWaits;
}

const HOST_SCRIPT = join(REPO_ROOT, 'dist', 'bench', 'migrate-agent-host.js');
const START_TIMEOUT_MS = 60_000;

export async function startFerryAgent(dataDir: string): Promise<FerryHost> {
  const child = spawnChild(
    'ferry agent host',
    process.execPath,
    [HOST_SCRIPT, dataDir],
    { ...process.env, UV_THREADPOOL_SIZE: process.env.UV_THREADPOOL_SIZE ?? '16' },
    true,
  );
  const replies = new Map<number, (reply: AgentReply) => void>();
  let nbdPort = 0;
  const ready = new Promise<void>((resolve) => {
    child.process.on('message', (message: AgentReply | { type: 'ready'; nbdPort: number }) => {
      if (message.type === 'ready') {
        nbdPort = message.nbdPort;
        resolve();
      } else {
        replies.get(message.id)?.(message);
        replies.delete(message.id);
      }
    });
  });
  try {
    await step('starting the agent host', START_TIMEOUT_MS, () =>
      Promise.race([ready, child.exited.then((status) => diedError(child, status))]),
    );
  } catch (error) {
    await stopChild(child);
    throw error;
  }
  let nextId = 1;
  const ask = (operation: AgentOperation): Promise<unknown> => {
    const id = nextId++;
    const answered = new Promise<unknown>((resolve, reject) => {
      replies.set(id, (reply) =>
        reply.error === null
          ? resolve(reply.value)
          : reject(new Error(`${operation.op}: ${reply.error}`)),
      );
    });
    child.process.send({ ...operation, id });
    return Promise.race([answered, child.exited.then((status) => diedError(child, status))]);
  };
  return {
    driver: 'agent',
    nbdUrl: `nbd://127.0.0.1:${nbdPort}`,
    addDatastore: async (name, path) => void (await ask({ op: 'addDatastore', name, path })),
    importDisk: async (name, file, datastore) =>
      void (await ask({ op: 'importDisk', name, file, datastore })),
    move: async (spec) => {
      const report = (await ask({
        op: 'move',
        request: moveRequest(spec),
        waitsBaselineMs: spec.waitsBaselineMs ?? 0,
      })) as MoveReport;
      return outcomeOf(spec, report, report.startedAtMs, Date.now());
    },
    stop: () => stopChild(child),
  };
}

function diedError(child: Child, status: number | string): never {
  throw new Error(`the agent host exited (${status}):\n${child.output()}`);
}

function moveRequest(spec: MoveSpec): MoveDiskRequest {
  return {
    name: spec.disk,
    datastore: spec.datastore,
    method: spec.method,
    ...(spec.tuning === undefined ? {} : { tuning: spec.tuning }),
  };
}

function outcomeOf(
  spec: MoveSpec,
  report: MoveReport,
  askedAtMs: number,
  endedAtMs: number,
): MoveOutcome {
  const switchover = report.events.find((stamped) => stamped.event.type === 'switchover');
  // A failed job has no result: its method is the last one it announced.
  const method = report.events.reduce<string>(
    (now, stamped) => (stamped.event.type === 'method' ? stamped.event.method : now),
    spec.method,
  );
  const { result } = report;
  return {
    state: result === null ? 'failed' : 'succeeded',
    method: result?.method ?? method,
    askedAtMs,
    endedAtMs,
    durationMs: result?.durationMs ?? endedAtMs - askedAtMs,
    downtimeMs: result?.downtimeMs ?? null,
    switchoverAtMs: switchover?.atMs ?? null,
    bytesCopied: result?.bytesCopied ?? 0,
    passes: result?.passes ?? 0,
    dirtyAtSwitchoverBytes: report.dirtyAtSwitchoverBytes,
    stun: switchover?.event.type === 'switchover' ? stunOf(switchover.event) : null,
    waits: report.waits,
    error: report.error,
  };
}

function stunOf(event: Extract<MigrationEvent, { type: 'switchover' }>): StunBreakdown {
  const { drainMs, finalCopyMs, flushMs, commitMs } = event;
  return { drainMs, finalCopyMs, flushMs, commitMs };
}
