/**
 * What the cross-host move tests share (migrate.test.ts, migrate-crashes.test.ts): two network
 * namespaces joined by a veth, each running `ferry serve`, guests writing through host a, and
 * the checks of every acknowledged write.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fioArgs } from '../cli/fio-guest.js';
import { createHostPair, type HostPair } from './netns.js';
import { type RecordingGuest, startRecordingGuest } from './recording-guest.js';
import { type ServedHost, type ServedPair, startServedPair } from './two-serves.js';

export const MiB = 1024 * 1024;
export const DISK_BYTES = 48 * MiB;

export interface JobJson {
  readonly id: string;
  readonly state: string;
  readonly method: string;
  readonly downtimeMs: number | null;
  readonly error: { code: string; message: string } | null;
}

export interface DiskJson {
  readonly host: string | null;
  readonly datastore: string;
  readonly image: string;
  readonly generation: number;
}

export async function withServedPair(
  body: (served: ServedPair, pair: HostPair) => Promise<void>,
  env: { a?: Record<string, string>; b?: Record<string, string> } = {},
): Promise<void> {
  const pair = await createHostPair();
  try {
    await body(await startServedPair(pair, env), pair);
  } finally {
    await pair.dispose();
  }
}

export async function diskOn(host: ServedHost, name: string): Promise<DiskJson> {
  return JSON.parse(await host.ferryOk(['disk', 'show', name, '--json'])) as DiskJson;
}

/** fio in `host` against `target`; throws with fio's output unless it exits 0. */
export async function fio(
  host: ServedHost,
  target: string,
  extra: readonly string[],
): Promise<void> {
  const result = await host.host.exec('fio', fioArgs(target, DISK_BYTES, extra), {
    timeoutMs: 120_000,
    cwd: host.dataDir,
  });
  assert.equal(
    result.code,
    0,
    `fio ${extra.join(' ')} on ${host.name}:\n${result.stdout}\n${result.stderr}`,
  );
}

/** Reads a disk whole through `host`'s export, from inside that host. */
export async function readExport(host: ServedHost, name: string): Promise<Buffer> {
  const file = join(host.dataDir, `read-${name}.raw`);
  const result = await host.host.exec('qemu-img', [
    'convert',
    '-f',
    'raw',
    '-O',
    'raw',
    `nbd://127.0.0.1:${host.nbdPort()}/${name}`,
    file,
  ]);
  assert.equal(result.code, 0, result.stderr);
  return readFile(file);
}

/**
 * Creates vm1 on `a` full of one pattern, so the copy has all of it to carry (a thin disk never
 * written copies in no time), and returns what it holds.
 */
export async function createFilledDisk(a: ServedHost): Promise<Buffer> {
  await a.ferryOk(['disk', 'create', 'vm1', '--size', String(DISK_BYTES)]);
  const uri = `nbd://127.0.0.1:${a.nbdPort()}/vm1`;
  const result = await a.host.exec('qemu-io', [
    '-f',
    'raw',
    '-c',
    `write -P 0x11 0 ${DISK_BYTES}`,
    uri,
  ]);
  assert.equal(result.code, 0, result.stderr);
  return Buffer.alloc(DISK_BYTES, 0x11);
}

/**
 * A filled vm1 on `a`, the recording guest (seeded `seed`) writing to it, and a slow move to b
 * (8 MiB/s, so a test can strike while it copies); returns once the job runs.
 */
export async function startSlowMove(
  a: ServedHost,
  seed: number,
): Promise<{ initial: Buffer; guest: RecordingGuest; jobId: string }> {
  const initial = await createFilledDisk(a);
  const guest = startRecordingGuest(a.host, { port: a.nbdPort(), exportName: 'vm1' }, seed);
  const args = ['migrate', 'vm1', '--to-host', 'b', '--speed', '8M', '--detach', '--json'];
  const started = JSON.parse(await a.ferryOk(args)) as JobJson;
  return { initial, guest, jobId: started.id };
}

/** Follows job `id` on `a` to its end (the watch exits 1 for a failed job: its JSON is read). */
export async function watchJob(a: ServedHost, id: string): Promise<JobJson> {
  const watched = await a.ferry(['job', 'watch', id, '--json'], 120_000);
  return JSON.parse(watched.stdout) as JobJson;
}
