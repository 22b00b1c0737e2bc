import { stopChild } from './children.js';
import type { FerryHost, MoveOutcome, MoveSpec } from './migrate-ferry.js';
import { pause } from './migrate-step.js';
import { startFerryServe } from './servers.js';

/**
 * The `api` driver: `ferry serve` over a data directory, driven through its REST API as an
 * operator's script would. A job is followed by polling its record, and the times that matter
 * (start, end, switchover) are taken from the record's own stamps, not from when a poll saw them.
 */

const POLL_MS = 50;

/** The fields of a job record (src/control/job-record.ts) the benchmark reads. */
interface JobView {
  id: string;
  state: string;
  method: string;
  durationMs: number;
  downtimeMs: number | null;
  bytesCopied: number;
  passes: number;
  finishedAt: string | null;
  error: { code: string; message: string } | null;
  events: { time: string; type: string; message: string }[];
}

const TERMINAL_STATES = ['succeeded', 'failed', 'cancelled'] as const;
type TerminalState = (typeof TERMINAL_STATES)[number];

/** The `api` driver's host, with what a bench of the agent process itself needs. */
export interface FerryApiHost extends FerryHost {
  /** The agent's process id (`ferry serve` runs in the child itself): for /proc/PID/status. */
  readonly pid: number;
  /** GET on the API, for the views the interface does not carry. */
  get(path: string): Promise<unknown>;
}

export async function startFerryApi(
  dataDir: string,
  stop: AbortSignal,
  nodeArgs: readonly string[] = [],
): Promise<FerryApiHost> {
  const { child, nbdPort, apiPort } = await startFerryServe(dataDir, nodeArgs);
  const pid = child.process.pid;
  if (pid === undefined) throw new Error('ferry serve has no pid');
  const base = `http://127.0.0.1:${apiPort}`;
  const call = (method: string, path: string, body?: object): Promise<unknown> =>
    request(base, method, path, body);
  return {
    driver: 'api',
    pid,
    get: (path) => call('GET', path),
    nbdUrl: `nbd://127.0.0.1:${nbdPort}`,
    addDatastore: async (name, path) => void (await call('POST', '/v1/datastores', { name, path })),
    importDisk: async (name, file, datastore) =>
      void (await call('POST', '/v1/disks/import', { name, file, datastore })),
    move: (spec) => moveThroughApi(call, spec, stop),
    stop: () => stopChild(child),
  };
}

type Call = (method: string, path: string, body?: object) => Promise<unknown>;

async function moveThroughApi(call: Call, spec: MoveSpec, stop: AbortSignal): Promise<MoveOutcome> {
  if (spec.tuning !== undefined) {
    throw new Error('POST /v1/migrations takes no method tuning: use the agent driver for it');
  }
  const askedAtMs = Date.now();
  const started = (await call('POST', '/v1/migrations', {
    disk: spec.disk,
    datastore: spec.datastore,
    method: spec.method,
  })) as JobView;
  let job = started;
  while (!isTerminal(job.state)) {
    await pause(POLL_MS, stop);
    job = (await call('GET', `/v1/jobs/${started.id}`)) as JobView;
  }
  const switchover = job.events.find((event) => event.type === 'switchover');
  return {
    state: job.state,
    method: job.method,
    askedAtMs,
    endedAtMs: job.finishedAt === null ? Date.now() : Date.parse(job.finishedAt),
    durationMs: job.durationMs,
    downtimeMs: job.downtimeMs,
    switchoverAtMs: switchover === undefined ? null : Date.parse(switchover.time),
    bytesCopied: job.bytesCopied,
    passes: job.passes,
    dirtyAtSwitchoverBytes: null,
    stun: null,
    waits: null,
    error: job.error === null ? null : `${job.error.code}: ${job.error.message}`,
  };
}

function isTerminal(state: string): state is TerminalState {
  return (TERMINAL_STATES as readonly string[]).includes(state);
}

async function request(
  base: string,
  method: string,
  path: string,
  body?: object,
): Promise<unknown> {
  const response = await fetch(`${base}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${path} ${JSON.stringify(body ?? {})}: ${response.status} ${text}`);
  }
  return text === '' ? undefined : (JSON.parse(text) as unknown);
}
