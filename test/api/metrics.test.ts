/**
 * `GET /metrics` of a real `ferry serve`: a client writes over NBD (our own NBD client, so only
 * promtool is needed), a disk moves between
 * datastores, and the scrape is checked by Prometheus' own parser (`promtool check metrics`) and
 * for values that follow from what the test did.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';
import { NbdClient } from '../../src/nbd/client.js';
import { runFerry, startServe } from '../cli/ferry-process.js';
import { toolTest } from '../nbd/interop-helpers.js';
import { sampleOf } from './prometheus-text.js';

const KIB = 1024;

function promtoolCheck(text: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.stderr.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, output }));
    child.stdin.end(text);
  });
}

toolTest(
  'metrics: a scrape promtool accepts, with the I/O, space and jobs that happened',
  ['promtool'],
  async () => {
    // Not makeTempDir: the directory must outlive the server, which the hook below stops first.
    const dir = await mkdtemp(join(tmpdir(), 'ferry-metrics-'));
    const serve = await startServe([
      '--data',
      join(dir, 'data'),
      '--nbd',
      '127.0.0.1:0',
      '--api',
      '127.0.0.1:0',
      '--disk',
      'vm1:4M',
    ]);
    after(async () => {
      serve.child.kill('SIGTERM');
      await serve.exited;
      await rm(dir, { recursive: true, force: true });
    });
    const env = { FERRY_API: serve.ready.apiUrl };
    const scrape = async (): Promise<string> => {
      const response = await fetch(`${serve.ready.apiUrl}/metrics`);
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      return response.text();
    };
    /** Opens vm1 over NBD, runs `body`, closes. */
    const withDisk = async (body: (disk: NbdClient) => Promise<void>): Promise<void> => {
      const disk = await NbdClient.connect({
        host: '127.0.0.1',
        port: serve.ready.nbdPort,
        exportName: 'vm1',
      });
      try {
        await body(disk);
      } finally {
        await disk.close();
      }
    };
    const block = (byte: number, length: number) => Buffer.alloc(length, byte);

    // A move, with data on the disk before it that must be there after it.
    await mkdir(join(dir, 'fast'));
    const added = await runFerry(['datastore', 'add', 'fast', join(dir, 'fast')], env);
    assert.equal(added.code, 0, added.stderr);
    await withDisk(async (disk) => disk.write(0, block(0x5a, 1024 * KIB), { fua: true }));
    const moved = await runFerry(['migrate', 'vm1', '--to', 'fast'], env);
    assert.equal(moved.code, 0, moved.stderr);

    // Three writes of 64 KiB, counted on the disk as it lives now (on fast).
    const before = await scrape();
    const writes = [0x11, 0x22, 0x33].map((byte, index) => ({
      offset: (index + 1) * 1024 * KIB,
      data: block(byte, 64 * KIB),
    }));
    await withDisk(async (disk) => {
      for (const { offset, data } of writes) await disk.write(offset, data, { fua: true });
    });
    const text = await scrape();
    await withDisk(async (disk) => {
      assert.ok((await disk.read(0, 1024 * KIB)).equals(block(0x5a, 1024 * KIB)));
      for (const { offset, data } of writes) {
        assert.ok((await disk.read(offset, data.length)).equals(data), `write at ${offset}`);
      }
    });

    const checked = await promtoolCheck(text);
    assert.equal(checked.code, 0, `promtool check metrics: ${checked.output}`);

    const write = { disk: 'vm1', datastore: 'fast', verb: 'write' };
    const delta = (name: string, labels: Record<string, string>) =>
      sampleOf(text, name, labels) - sampleOf(before, name, labels);
    assert.equal(delta('ferry_disk_operations_total', write), 3);
    assert.equal(delta('ferry_disk_bytes_total', write), 3 * 64 * KIB);
    // The histogram is cumulative: +Inf holds every write, and so does _count.
    assert.equal(delta('ferry_disk_latency_seconds_bucket', { ...write, le: '+Inf' }), 3);
    assert.equal(delta('ferry_disk_latency_seconds_count', write), 3);
    assert.ok(delta('ferry_disk_latency_seconds_sum', write) > 0);

    for (const datastore of ['local', 'fast']) {
      const capacity = sampleOf(text, 'ferry_datastore_capacity_bytes', { datastore });
      const used = sampleOf(text, 'ferry_datastore_used_bytes', { datastore });
      const free = sampleOf(text, 'ferry_datastore_free_bytes', { datastore });
      assert.ok(capacity > 0);
      assert.equal(used + free, capacity);
    }

    assert.equal(sampleOf(text, 'ferry_jobs', { state: 'succeeded' }), 1);
    assert.equal(sampleOf(text, 'ferry_jobs', { state: 'running' }), 0);
    assert.equal(sampleOf(text, 'ferry_migration_downtime_seconds_count'), 1);
    assert.equal(sampleOf(text, 'ferry_migration_downtime_seconds_bucket', { le: '+Inf' }), 1);
    const jobs = (await (await fetch(`${serve.ready.apiUrl}/v1/jobs`)).json()) as {
      jobs: { downtimeMs: number }[];
    };
    const downtimeMs = jobs.jobs[0]?.downtimeMs ?? Number.NaN;
    assert.ok(
      Math.abs(sampleOf(text, 'ferry_migration_downtime_seconds_sum') - downtimeMs / 1000) < 1e-9,
    );
    assert.ok(sampleOf(text, 'ferry_process_resident_memory_bytes') > 0);
  },
);
