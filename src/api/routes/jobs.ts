import type { FastifyInstance } from 'fastify';
import type { JobManager } from '../../control/job-manager.js';
import { parseSpeed } from '../../control/speed.js';
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
 */
export function registerJobRoutes(app: FastifyInstance, jobs: JobManager): void {
  app.post<{ Body: StartMigrationBody }>(
    '/v1/migrations',
    { schema: { body: startMigrationBodySchema } },
    async (request, reply) => {
      const { disk, vm, datastore, host, method, speed, provisioning } = request.body;
      // The schema let exactly one of `disk` and `vm` through.
      const subject = vm === undefined ? { disk: disk ?? '' } : { vm };
      const job = await jobs.startMigration({
        ...subject,
        ...(datastore === undefined ? {} : { datastore }),
        ...(host === undefined ? {} : { host }),
        ...(method === undefined ? {} : { method }),
        ...(speed === undefined ? {} : { speedBytesPerSecond: speedOf(speed) }),
        ...(provisioning === undefined ? {} : { provisioning }),
      });
      // 202: the move runs on; the record says where to follow it.
      return reply.status(202).header('location', `/v1/jobs/${job.id}`).send(job);
    },
  );

  app.get('/v1/jobs', async () => ({ jobs: jobs.list() }));

  app.get<{ Params: JobParams }>(
    '/v1/jobs/:id',
    { schema: { params: jobParamsSchema } },
    async (request) => jobs.get(request.params.id),
  );

  app.post<{ Params: JobParams }>(
    '/v1/jobs/:id/cancel',
    { schema: { params: jobParamsSchema } },
    // 202: the rollback runs on; the job reaches `cancelled` once the guest is on its source.
    async (request, reply) => reply.status(202).send(jobs.cancel(request.params.id)),
  );

  app.post<{ Params: JobParams; Body: JobSpeedBody }>(
    '/v1/jobs/:id/speed',
    { schema: { params: jobParamsSchema, body: jobSpeedBodySchema } },
    async (request) => jobs.setSpeed(request.params.id, speedOf(request.body.speed)),
  );
}

function speedOf(speed: string | number): number {
  return typeof speed === 'number' ? speed : parseSpeed(speed);
}
