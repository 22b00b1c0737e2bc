import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before } from 'node:test';
import type { BlockDevice } from '../../src/block/device.js';
import { MemoryDevice } from '../../src/block/memory.js';
import { createRawImage, openRawFile } from '../../src/block/raw-file.js';
import { NbdServer } from '../../src/nbd/server.js';
import {
  CountingExports,
  dataRuns,
  hashBuffer,
  hashFile,
  type MapEntry,
  MiB,
  type RunOptions,
  runOk,
  runTool,
  toolTest,
} from './interop-helpers.js';

/**
 * Real NBD clients against an in-process server (DESIGN.md, "How we know it works"): qemu-img,
 * qemu-io, nbdinfo, nbdcopy and fio's nbd engine, each run as a child process. The raw-file
 * exports are thin images in a temp directory, the product's own backend. Every check that can
 * pass is also shown to fail once, by corrupting what it checks.
 *
 * Each test uses its own export, so the tests do not depend on one another's order.
 */

const DISK_BYTES = 64 * MiB;
const RO_BYTES = 16 * MiB;

let dir: string;
let server: NbdServer;
let port: number;
let socketPath: string;
const exports = new CountingExports();
/** The raw-file device behind export `io`, to check what reached the image. */
let ioDevice: BlockDevice;
/** The memory device behind export `mem`. */
let memDevice: MemoryDevice;
/** What the read-only export holds. */
let roContent: Buffer;

const url = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;
const unixUrl = (name: string): string => `nbd+unix:///${name}?socket=${socketPath}`;

async function thinRaw(name: string, description: string): Promise<BlockDevice> {
  const path = join(dir, `${name}.raw`);
  await createRawImage(path, DISK_BYTES, 'thin');
  const device = await openRawFile(path, { provisioning: 'thin' });
  exports.add(name, description, device);
  return device;
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-interop-'));
  socketPath = join(dir, 'nbd.sock');
  await thinRaw('disk', 'thin raw image for qemu-img');
  ioDevice = await thinRaw('io', 'thin raw image for qemu-io');
  await thinRaw('map', 'thin raw image for nbdinfo --map');
  await thinRaw('fio', 'thin raw image for fio');
  memDevice = new MemoryDevice(DISK_BYTES);
  exports.add('mem', 'memory disk', memDevice);
  roContent = randomBytes(RO_BYTES);
  await writeFile(join(dir, 'ro.raw'), roContent);
  exports.add(
    'ro',
    'read-only raw image',
    await openRawFile(join(dir, 'ro.raw'), { provisioning: 'thin', isReadOnly: true }),
  );
  server = new NbdServer({ exports });
  port = (await server.listenTcp('127.0.0.1', 0)).port;
  await server.listenUnix(socketPath);
});

after(async () => {
  await server?.close();
  await Promise.all(exports.devices().map((device) => device.close()));
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
});

/** A local raw file of `bytes` random bytes; returns its path. */
async function randomFile(name: string, bytes: number): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, randomBytes(bytes));
  return path;
}

async function qemuIo(target: string, commands: readonly string[], extra: readonly string[] = []) {
  return runTool('qemu-io', [...extra, '-f', 'raw', target, ...commands.flatMap((c) => ['-c', c])]);
}

async function nbdinfoJson(target: string): Promise<Record<string, unknown>> {
  const { stdout } = await runOk('nbdinfo', ['--json', target]);
  const exportsSeen = (JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports;
  assert.equal(exportsSeen.length, 1);
  return exportsSeen[0]!;
}

// ---------------------------------------------------------------------------------------------
// qemu-img

toolTest('qemu-img info shows the export size', ['qemu-img'], async () => {
  const { stdout } = await runOk('qemu-img', ['info', '--output=json', url('disk')]);
  const info = JSON.parse(stdout) as { 'virtual-size': number; format: string };
  assert.equal(info['virtual-size'], DISK_BYTES);
  assert.equal(info.format, 'raw');
});

toolTest('qemu-img convert into the export and back, and compare', ['qemu-img'], async () => {
  const source = await randomFile('convert-in.raw', DISK_BYTES);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, url('disk')]);
  const same = await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', url('disk'), source]);
  assert.match(same.stdout, /Images are identical/);

  const back = join(dir, 'convert-out.raw');
  await runOk('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', url('disk'), back]);
  assert.equal(await hashFile(back), await hashFile(source));
});

toolTest('qemu-img compare catches one corrupted byte', ['qemu-img', 'qemu-io'], async () => {
  const source = await randomFile('compare-in.raw', DISK_BYTES);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, url('disk')]);
  const at = 5 * MiB + 12345;
  const flipped = (await readFile(source)).readUInt8(at) ^ 0xff;
  const hex = `0x${flipped.toString(16)}`;
  const corrupt = await qemuIo(url('disk'), [`write -P ${hex} ${at} 1`]);
  assert.equal(corrupt.code, 0, corrupt.stderr);

  const differ = await runTool('qemu-img', [
    'compare',
    '-f',
    'raw',
    '-F',
    'raw',
    url('disk'),
    source,
  ]);
  assert.equal(differ.code, 1, `qemu-img compare must report a difference: ${differ.stdout}`);
  const reported = Number(/Content mismatch at offset (\d+)/.exec(differ.stdout)?.[1]);
  assert.ok(
    reported <= at && at - reported < 512,
    `mismatch reported at ${reported}, written at ${at}`,
  );
});

// ---------------------------------------------------------------------------------------------
// qemu-io, over TCP and over the Unix socket

for (const transport of ['tcp', 'unix'] as const) {
  const target = (): string => (transport === 'tcp' ? url('io') : unixUrl('mem'));

  toolTest(
    `qemu-io patterns, zeroes, unaligned writes and flush over ${transport}`,
    ['qemu-io'],
    async () => {
      const good = await qemuIo(target(), ['write -P 0x5a 0 1M', 'read -P 0x5a 0 1M', 'flush']);
      assert.equal(good.code, 0, good.stdout + good.stderr);

      const wrong = await qemuIo(target(), ['read -P 0x00 0 1M']);
      assert.notEqual(wrong.code, 0, 'a wrong pattern must fail');
      assert.match(wrong.stdout + wrong.stderr, /Pattern verification failed/);

      const zeroed = await qemuIo(target(), [
        'write -z 0 64k',
        'read -P 0 0 64k',
        'read -P 0x5a 64k 960k',
        'write -P 0x11 513 1000',
        'read -P 0 0 513',
        'read -P 0x11 513 1000',
        'read -P 0 1513 64023',
        'flush',
      ]);
      assert.equal(zeroed.code, 0, zeroed.stdout + zeroed.stderr);
    },
  );

  toolTest(`qemu-io pipelined aio_write over ${transport}`, ['qemu-io'], async () => {
    const base = 8 * MiB;
    const writes = Array.from(
      { length: 32 },
      (_, i) => `aio_write -P 0x${(0x20 + i).toString(16)} ${base + i * 65536} 64k`,
    );
    const reads = Array.from(
      { length: 32 },
      (_, i) => `read -P 0x${(0x20 + i).toString(16)} ${base + i * 65536} 64k`,
    );
    const result = await qemuIo(target(), [...writes, 'aio_flush', ...reads, 'flush']);
    assert.equal(result.code, 0, result.stdout + result.stderr);
    assert.doesNotMatch(result.stdout + result.stderr, /fail/i);
  });
}

toolTest('what qemu-io wrote over TCP is on the image', ['qemu-io'], async () => {
  const result = await qemuIo(url('io'), ['write -P 0x77 3000 5000', 'flush']);
  assert.equal(result.code, 0, result.stdout + result.stderr);
  const onDevice = await ioDevice.read(2999, 5002);
  assert.equal(
    onDevice.subarray(1, 5001).every((byte) => byte === 0x77),
    true,
  );
  const path = join(dir, 'io.raw');
  const handle = await open(path, 'r');
  try {
    const { buffer } = await handle.read(Buffer.alloc(5000), 0, 5000, 3000);
    assert.equal(
      buffer.every((byte) => byte === 0x77),
      true,
      'the image file holds the write',
    );
  } finally {
    await handle.close();
  }
});

// ---------------------------------------------------------------------------------------------
// nbdinfo

toolTest('nbdinfo --list shows every export with its description', ['nbdinfo'], async () => {
  const { stdout } = await runOk('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
  const listed = (JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports;
  const byName = new Map(listed.map((entry) => [entry['export-name'], entry]));
  for (const expected of exports.list()) {
    const entry = byName.get(expected.name);
    assert.ok(entry, `export ${expected.name} is listed`);
    assert.equal(entry.description, expected.description);
    assert.equal(entry['export-size'], expected.device.size);
  }
  assert.equal(listed.length, exports.list().length);
});

toolTest('nbdinfo --json reports size and capabilities', ['nbdinfo'], async () => {
  const info = await nbdinfoJson(url('disk'));
  assert.equal(info['export-size'], DISK_BYTES);
  assert.equal(info.is_read_only, false);
  assert.equal(info.can_multi_conn, true);
  assert.equal(info.can_flush, true);
  assert.equal(info.can_fua, true);
  assert.equal(info.can_trim, true);
  assert.equal(info.can_zero, true);
  assert.deepEqual(info.contexts, ['base:allocation']);
  assert.equal(info.block_size_minimum, 1);
});

toolTest(
  'nbdinfo --map shows written regions as data and the rest as holes',
  ['nbdinfo', 'qemu-io'],
  async () => {
    const written = await qemuIo(url('map'), [
      'write -P 0x42 4M 1M',
      'write -P 0x43 40M 64k',
      'flush',
    ]);
    assert.equal(written.code, 0, written.stdout + written.stderr);

    const { stdout } = await runOk('nbdinfo', ['--map', '--json', url('map')]);
    const entries = JSON.parse(stdout) as MapEntry[];
    let at = 0;
    for (const entry of entries) {
      assert.equal(entry.offset, at, 'the map is contiguous');
      assert.ok(entry.type === 0 || entry.type === 3, `type ${entry.type} at ${entry.offset}`);
      at += entry.length;
    }
    assert.equal(at, DISK_BYTES, 'the map covers the whole disk');
    assert.deepEqual(dataRuns(entries), [
      [4 * MiB, 5 * MiB],
      [40 * MiB, 40 * MiB + 65536],
    ]);
  },
);

toolTest(
  'a read-only export says so, refuses writes and still reads',
  ['nbdinfo', 'qemu-io', 'nbdcopy'],
  async () => {
    const info = await nbdinfoJson(url('ro'));
    assert.equal(info.is_read_only, true);
    assert.equal(info['export-size'], RO_BYTES);

    const write = await qemuIo(url('ro'), ['write -P 0x33 0 4k']);
    assert.notEqual(write.code, 0, 'a write to a read-only export must fail');
    assert.match(write.stdout + write.stderr, /read-only|Permission denied/i);

    const copy = join(dir, 'ro-copy.raw');
    await runOk('nbdcopy', [url('ro'), copy]);
    assert.equal(await hashFile(copy), hashBuffer(roContent));
  },
);

// ---------------------------------------------------------------------------------------------
// nbdcopy

toolTest('nbdcopy from a file to the export and back', ['nbdcopy'], async () => {
  const source = await randomFile('copy-in.raw', DISK_BYTES);
  await runOk('nbdcopy', ['--connections=1', source, url('mem')]);
  const back = join(dir, 'copy-out.raw');
  await runOk('nbdcopy', ['--connections=1', url('mem'), back]);
  const expected = await hashFile(source);
  assert.equal(await hashFile(back), expected);
  assert.equal(
    hashBuffer(await memDevice.read(0, DISK_BYTES)),
    expected,
    'the device holds the copy',
  );
});

toolTest(
  'nbdcopy --connections 4 writes holes as zeros and reads back the same',
  ['nbdcopy'],
  async () => {
    // Half data, half holes, over an export that holds other data: the holes must arrive as zeros.
    const source = join(dir, 'sparse-in.raw');
    const handle = await open(source, 'w');
    try {
      for (let at = 0; at < DISK_BYTES; at += 8 * MiB) {
        await handle.write(randomBytes(4 * MiB), 0, 4 * MiB, at);
      }
    } finally {
      await handle.close();
    }
    await truncate(source, DISK_BYTES);
    await runOk('nbdcopy', [await randomFile('filler.raw', DISK_BYTES), url('mem')]);

    const before = exports.lookupCount('mem');
    // nbdcopy uses at most one connection per thread, and its default is one thread per core.
    await runOk('nbdcopy', ['--connections=4', '--threads=4', source, url('mem')]);
    assert.ok(exports.lookupCount('mem') - before >= 4, 'nbdcopy opened 4 connections');
    const back = join(dir, 'sparse-out.raw');
    await runOk('nbdcopy', ['--connections=4', '--threads=4', url('mem'), back]);
    assert.equal(await hashFile(back), await hashFile(source));
  },
);

// ---------------------------------------------------------------------------------------------
// fio

/** Random writes over a fixed size with the random map on: every block written exactly once. */
function fioWriteArgs(name: string): string[] {
  return [
    '--name=t',
    '--ioengine=nbd',
    `--uri=${url(name)}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=32',
    '--size=64M',
    '--verify=crc32c',
    '--do_verify=1',
    '--randrepeat=0',
    '--norandommap=0',
    '--verify_state_save=0',
    '--output-format=json',
  ];
}

function fioOptions(): RunOptions {
  return { timeoutMs: 60_000, cwd: dir };
}

interface FioJob {
  error: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

/** fio's nbd engine prints "fio: connected to NBD server" before the JSON document. */
function fioJobs(stdout: string): FioJob[] {
  return (JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: FioJob[] }).jobs;
}

toolTest(
  'fio random writes verify, verify_only passes, and a corrupted block fails it',
  ['fio', 'qemu-io'],
  async () => {
    const write = await runOk('fio', fioWriteArgs('fio'), fioOptions());
    const [written] = fioJobs(write.stdout);
    assert.equal(written?.error, 0);
    assert.equal(written?.write.io_bytes, DISK_BYTES);
    assert.equal(written?.read.io_bytes, DISK_BYTES, 'every block was read back and verified');

    const check = await runOk('fio', [...fioWriteArgs('fio'), '--verify_only'], {
      timeoutMs: 60_000,
    });
    const [checked] = fioJobs(check.stdout);
    assert.equal(checked?.error, 0);
    assert.equal(checked?.read.io_bytes, DISK_BYTES, 'every block was verified');

    const corrupt = await qemuIo(url('fio'), ['write -P 0xab 40960 4096', 'flush']);
    assert.equal(corrupt.code, 0, corrupt.stderr);
    const caught = await runTool('fio', [...fioWriteArgs('fio'), '--verify_only'], {
      timeoutMs: 60_000,
    });
    assert.notEqual(caught.code, 0, 'verify_only must fail on the corrupted block');
    assert.match(caught.stderr, /verify: bad magic header .* offset 40960/);
  },
);

toolTest('fio randrw on two connections with verify', ['fio'], async () => {
  const before = exports.lookupCount('mem');
  const result = await runOk(
    'fio',
    [
      '--name=rw',
      '--ioengine=nbd',
      `--uri=${url('mem')}`,
      '--rw=randrw',
      '--bs=4k',
      '--iodepth=16',
      '--numjobs=2',
      // Each job owns its half, so neither verifies blocks the other wrote.
      '--size=32M',
      '--offset_increment=32M',
      '--verify=crc32c',
      '--do_verify=1',
      '--randrepeat=0',
      '--verify_state_save=0',
      '--output-format=json',
    ],
    fioOptions(),
  );
  const jobs = fioJobs(result.stdout);
  assert.equal(jobs.length, 2);
  for (const job of jobs) {
    assert.equal(job.error, 0);
    assert.ok(job.write.io_bytes > 0, 'the job wrote');
  }
  assert.ok(exports.lookupCount('mem') - before >= 2, 'fio opened one connection per job');
});
