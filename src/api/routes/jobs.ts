import type { FastifyInstance } from 'fastify';
import type { JobManager } from '../../control/job-manager.js';
import type { RemoteJobs } from '../../control/remote-jobs.js';
import { parseSpeed } from '../../control/speed.js';
import { parseSize } from '../../util/size.js';
import { localOrRemote, remoteFor } from '../job-relay.js';
import {
  type JobParams,
  type JobSpeedBody,
  jobParamsSchema,
  jobSpeedBodySchema,
  type StartMigrationBody,
  startMigrationBodySchema,
} from '../schemas.js';

/**
 * `POST /v1/migrations` starts a disk move (`disk`) or a VM move (`vm`: home and disks); `/v1/jobs` lists, shows, cancels and re-speeds jobs.
 * A verb the job's state does not allow is 409 `ERR_JOB_STATE` (control/job-states.ts), whose
 * message says what the state allows. The live view is in job-events.ts.
 *
 * With `remote`, the jobs of other hosts whose disks this host receives are listed, shown,
 * cancelled and re-speeded here too, by asking the host that runs each (job-relay.ts); their
 * records carry `runsOn`, our name for that host.
 */
export function registerJobRoutes(
  app: FastifyInstance,
  jobs: JobManager,
  remote?: RemoteJobs,
): void {
  app.post<{ Body: StartMigrationBody }>(
    '/v1/migrations',
    { schema: { body: startMigrationBodySchema } },
    async (request, reply) => {
      const { disk, vm, datastore, host, method, speed, provisioning, mirror, mirrorBuffer } =
        request.body;
      const { networkMap, datastoreMap, maxDowntimeMs, guestFirst } = request.body;
      // The schema let exactly one of `disk` and `vm` through.
      const subject = vm === undefined ? { disk: disk ?? '' } : { vm };
      const job = await jobs.startMigration({
        ...subject,
        ...(datastore === undefined ? {} : { datastore }),
        ...(host === undefined ? {} : { host }),
        ...(mirror === undefined ? {} : { mirror }),
        ...(mirrorBuffer === undefined ? {} : { mirrorBufferBytes: sizeOf(mirrorBuffer) }),
        ...(method === undefined ? {} : { method }),
        ...(speed === undefined ? {} : { speedBytesPerSecond: speedOf(speed) }),
        ...(guestFirst === undefined ? {} : { isGuestFirst: guestFirst }),
        ...(provisioning === undefined ? {} : { provisioning }),
        ...(networkMap === undefined ? {} : { networkMap }),
        ...(datastoreMap === undefined ? {} : { datastoreMap }),
        ...(maxDowntimeMs === undefined ? {} : { maxDowntimeMs }),
      });
      // 202: the move runs on; the record says where to follow it.
      return reply.status(202).header('location', `/v1/jobs/${job.id}`).send(job);
    },
  );

  // The scheduler's limits and what holds them (control/scheduler.ts); set by `ferry serve
  // --max-host-migrations N --max-datastore-migrations N`.
  app.get('/v1/limits', async () => jobs.limits());

  app.get('/v1/jobs', async (request) => {
    const elsewhere = remoteFor(request, remote);
    return { jobs: [...jobs.list(), ...(elsewhere === undefined ? [] : await elsewhere.list())] };
  });

  app.get<{ Params: JobParams }>(
    '/v1/jobs/:id',
    { schema: { params: jobParamsSchema } },
    async (request) => {
      const { id } = request.params;
      return localOrRemote(
        () => jobs.get(id),
        remoteFor(request, remote),
        (r) => r.get(id),
      );
    },
  );

  app.post<{ Params: JobParams }>(
    '/v1/jobs/:id/cancel',
    { schema: { params: jobParamsSchema } },
    // 202: the rollback runs on; the job reaches `cancelled` once the guest is on its source.
    async (request, reply) => {
      const { id } = request.params;
      const record = await localOrRemote(
        () => jobs.cancel(id),
        remoteFor(request, remote),
        (r) => r.cancel(id),
      );
      return reply.status(202).send(record);
    },
  );

  app.post<{ Params: JobParams; Body: JobSpeedBody }>(
    '/v1/jobs/:id/speed',
    { schema: { params: jobParamsSchema, body: jobSpeedBodySchema } },
    async (request) => {
      const { id } = request.params;
      const speed = speedOf(request.body.speed);
      return localOrRemote(
        () => jobs.setSpeed(id, speed),
        remoteFor(request, remote),
        (r) => r.setSpeed(id, speed),
      );
    },
  );
}

function sizeOf(size: string | number): number {
  return typeof size === 'number' ? size : parseSize(size);
}

function speedOf(speed: string | number): number {
  return typeof speed === 'number' ? speed : parseSpeed(speed);
}
