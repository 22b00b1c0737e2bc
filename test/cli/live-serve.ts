/**
 * What the live-migration tests through `ferry serve` share (migrate-live.test.ts and the crash
 * tests, crash-cases.ts): the server as a child process with a second datastore, its API, and
 * waiting for a job.
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type ServeProcess, startServe } from './ferry-process.js';

export interface Job {
  readonly id: string;
  readonly state: string;
  readonly method: string;
  readonly downtimeMs: number | null;
  readonly error: { code: string; message: string } | null;
}

export async function api<T>(
  serve: ServeProcess,
  method: string,
  path: string,
  body?: object,
): Promise<T> {
  const response = await fetch(`${serve.ready.apiUrl}${path}`, {
    method,
    ...(body === undefined
      ? {}
      : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return (text === '' ? undefined : JSON.parse(text)) as T;
}

/** Polls the job until it is over; the job API's own tests cover its event stream. */
export async function waitJob(serve: ServeProcess, id: string): Promise<Job> {
  for (;;) {
    const job = await api<Job>(serve, 'GET', `/v1/jobs/${id}`);
    if (['succeeded', 'failed', 'cancelled'].includes(job.state)) return job;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function startWithFast(
  dataDir: string,
  env: Record<string, string> = {},
): Promise<ServeProcess> {
  const serve = await startServe(
    ['--data', dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'],
    env,
  );
  return serve;
}

export async function setUp(
  dataDir: string,
  serve: ServeProcess,
  sizeBytes: number,
): Promise<string> {
  const fast = join(dataDir, 'fast');
  await mkdir(fast, { recursive: true });
  await api(serve, 'POST', '/v1/datastores', { name: 'fast', path: fast });
  await api(serve, 'POST', '/v1/disks', { name: 'vm1', size: sizeBytes });
  return fast;
}

export async function stop(serve: ServeProcess): Promise<void> {
  serve.child.kill('SIGTERM');
  await serve.exited;
}
