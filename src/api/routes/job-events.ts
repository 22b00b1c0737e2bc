import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import type { JobManager } from '../../control/job-manager.js';
import type { JobEvent } from '../../control/job-record.js';
import { isTerminal } from '../../control/job-states.js';
import type { RemoteJobs } from '../../control/remote-jobs.js';
import { EventRelay } from '../event-relay.js';
import { EventStream } from '../event-stream.js';
import { localOrRemote, remoteFor } from '../job-relay.js';
import { type JobParams, jobParamsSchema } from '../schemas.js';

/**
 * The live view of jobs as Server-Sent Events (event-stream.ts):
 *
 * - `GET /v1/jobs/:id/events`: first `event: job` with the job's whole record, then every event
 *   of that job (`state`, `phase`, `pass`, `mode`, `method`, `speed`, `message`, `switchover`,
 *   `rollback`, and `progress` every quarter second), each `data` a `JobEvent`; the stream ends
 *   after the event that finishes the job, or at once if it had finished.
 * - `GET /v1/events`: every event of every job, until the client leaves.
 *
 * Streams end when the API closes (a `preClose` hook), so a dashboard left open never holds up
 * the shutdown.
 *
 * With `remote`, `/v1/jobs/:id/events` of another host's job whose disk this host receives is
 * that host's stream, relayed unchanged (event-relay.ts; its records lack `runsOn`). `/v1/events`
 * stays this host's own.
 */
export interface JobEventRouteOptions {
  /** Interval of the heartbeat comments; 15 s by default. */
  readonly heartbeatMs?: number;
}

const HEARTBEAT_MS_DEFAULT = 15_000;

export function registerJobEventRoutes(
  app: FastifyInstance,
  jobs: JobManager,
  options: JobEventRouteOptions = {},
  remote?: RemoteJobs,
): void {
  const heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS_DEFAULT;
  const open = new Set<EventStream>();
  const relays = new Set<EventRelay>();
  const start = (raw: ServerResponse): EventStream => openStream(raw, heartbeatMs, open);
  app.addHook('preClose', async () => {
    for (const stream of open) stream.close();
    for (const relay of relays) relay.close();
  });

  app.get<{ Params: JobParams }>(
    '/v1/jobs/:id/events',
    { schema: { params: jobParamsSchema } },
    async (request, reply) => {
      const { id } = request.params;
      // Before hijacking, so an unknown id (or a source host that cannot be reached) is an
      // ordinary error reply.
      const found = await localOrRemote(
        () => jobs.get(id),
        remoteFor(request, remote),
        async (r) => {
          const upstream = new AbortController();
          return { upstream, body: await r.events(id, upstream.signal) };
        },
      );
      reply.hijack();
      if ('upstream' in found) {
        const relay = new EventRelay(reply.raw, found.body, found.upstream);
        relays.add(relay);
        relay.onClose(() => relays.delete(relay));
        return;
      }
      const record = found;
      const stream = start(reply.raw);
      stream.send('job', record);
      if (isTerminal(record.state)) return stream.close();
      // Subscribed in the same turn as the record was read: no event falls in between.
      const unsubscribe = jobs.subscribe((event) => {
        sendEvent(stream, event);
        if (event.type === 'state' && isTerminal(event.job.state)) stream.close();
      }, record.id);
      stream.onClose(unsubscribe);
    },
  );

  app.get('/v1/events', async (_request, reply) => {
    reply.hijack();
    const stream = start(reply.raw);
    stream.onClose(jobs.subscribe((event) => sendEvent(stream, event)));
  });
}

function openStream(raw: ServerResponse, heartbeatMs: number, open: Set<EventStream>): EventStream {
  const stream = new EventStream(raw, heartbeatMs);
  open.add(stream);
  stream.onClose(() => open.delete(stream));
  return stream;
}

function sendEvent(stream: EventStream, event: JobEvent): void {
  stream.send(event.type, event, event.type === 'progress');
}
