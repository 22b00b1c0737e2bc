import assert from 'node:assert/strict';
import { access, readdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { makeTempDir } from '../host/temp-dir.js';
import { runFerry, startServe } from './ferry-process.js';

/** A TCP port nothing listens on (bound, then released). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  assert.ok(address !== null && typeof address === 'object');
  return address.port;
}

test('cli: --help teaches, --version answers, both exit 0', async () => {
  const help = await runFerry(['--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /ferry serve/);
  assert.match(help.stdout, /qemu-io .*nbd:\/\/127\.0\.0\.1:10809\/vm1/);
  assert.match(help.stdout, /FERRY_API/);
  const version = await runFerry(['--version']);
  assert.equal(version.code, 0);
  assert.match(version.stdout, /^\d+\.\d+\.\d+/);
  const createHelp = await runFerry(['disk', 'create', '--help']);
  assert.equal(createHelp.code, 0);
  assert.match(createHelp.stdout, /--thick/);
});

test('cli: usage errors exit 2 without contacting the API', async () => {
  const env = { FERRY_API: `http://127.0.0.1:${await closedPort()}` };
  const cases = [
    ['disk', 'create', 'vm1', '--size', 'ten'],
    ['disk', 'create', 'vm1', '--size', '1G', '--thin', '--thick'],
    ['disk', 'create', 'vm1'],
    ['frobnicate'],
    ['disk'],
    ['serve', '--nbd', 'nowhere'],
  ];
  const results = await Promise.all(cases.map((args) => runFerry(args, env)));
  for (const [index, result] of results.entries()) {
    assert.equal(result.code, 2, `${cases[index]?.join(' ')}: ${result.stderr}`);
    assert.doesNotMatch(result.stderr, /cannot reach/);
  }
});

test('cli: an unreachable API is reported with the way to start one, exit 1', async () => {
  const url = `http://127.0.0.1:${await closedPort()}`;
  const result = await runFerry(['disk', 'list'], { FERRY_API: url });
  assert.equal(result.code, 1);
  assert.ok(result.stderr.includes(url), result.stderr);
  assert.match(result.stderr, /ferry serve/);
});

test('cli: against ferry serve on port 0, every command, then a clean SIGTERM', async () => {
  const dir = await makeTempDir();
  const dataDir = join(dir, 'data');
  const serve = await startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  const env = { FERRY_API: serve.ready.apiUrl };
  try {
    assert.ok(serve.ready.nbdPort > 0 && serve.ready.apiPort > 0);
    assert.equal(serve.ready.nbdUrl, `nbd://127.0.0.1:${serve.ready.nbdPort}`);

    const created = await runFerry(['disk', 'create', 'vm1', '--size', '4M'], env);
    assert.equal(created.code, 0, created.stderr);
    assert.match(created.stdout, /Created disk vm1: 4M thin raw disk in datastore local/);
    assert.ok(created.stdout.includes(`${serve.ready.nbdUrl}/vm1`), created.stdout);

    const thick = await runFerry(
      ['disk', 'create', 'vm2', '--size', '1M', '--thick', '--json'],
      env,
    );
    assert.equal(thick.code, 0, thick.stderr);
    assert.equal(JSON.parse(thick.stdout).provisioning, 'thick');

    const duplicate = await runFerry(['disk', 'create', 'vm1', '--size', '4M'], env);
    assert.equal(duplicate.code, 1);
    assert.match(duplicate.stderr, /^ferry: disk vm1 already exists/);
    const badName = await runFerry(['disk', 'create', '.x', '--size', '4M'], env);
    assert.equal(badName.code, 2, 'a name the API refuses is a usage error');
    assert.match(badName.stderr, /not a valid disk name/);

    const listed = await runFerry(['disk', 'list'], env);
    assert.equal(listed.code, 0);
    const lines = listed.stdout.trimEnd().split('\n');
    assert.match(
      lines[0] ?? '',
      /^NAME\s+DATASTORE\s+SIZE\s+ALLOCATED\s+PROVISIONING\s+GEN\s+URI$/,
    );
    assert.equal(lines.length, 3);
    // Aligned: every row has its URI where the header has "URI".
    const uriColumn = lines[0]?.indexOf('URI');
    for (const line of lines.slice(1)) assert.equal(line.indexOf('nbd://'), uriColumn, line);
    const listedJson = await runFerry(['disk', 'list', '--json'], env);
    assert.deepEqual(
      JSON.parse(listedJson.stdout).map((d: { name: string }) => d.name),
      ['vm1', 'vm2'],
    );

    const shown = await runFerry(['disk', 'show', 'vm1'], env);
    assert.equal(shown.code, 0);
    assert.match(shown.stdout, /size:\s+4M \(4194304 bytes\)/);
    const missing = await runFerry(['disk', 'show', 'nope'], env);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /no disk named nope/);

    const storeDir = join(dir, 'store2');
    await import('node:fs/promises').then((fs) => fs.mkdir(storeDir));
    const added = await runFerry(['datastore', 'add', 'store2', storeDir], env);
    assert.equal(added.code, 0, added.stderr);
    const stores = await runFerry(['datastore', 'list'], env);
    assert.match(
      stores.stdout,
      /^NAME\s+CAPACITY\s+FREE\s+DISKS\s+STATE\s+CLUSTER\s+MAINTENANCE\s+PATH$/m,
    );
    assert.match(stores.stdout, /^store2\s+\S+\s+\S+\s+0\s+ok\s+/m);
    const storesJson = JSON.parse((await runFerry(['datastore', 'list', '--json'], env)).stdout);
    assert.deepEqual(
      storesJson.map((d: { name: string; diskCount: number }) => [d.name, d.diskCount]),
      [
        ['local', 2],
        ['store2', 0],
      ],
    );

    const image = join(dir, 'incoming.img');
    await writeFile(image, Buffer.alloc(64 * 1024, 1));
    const imported = await runFerry(['disk', 'import', 'imp', image, '--datastore', 'store2'], env);
    assert.equal(imported.code, 0, imported.stderr);
    assert.match(imported.stdout, /Imported disk imp: 64K thick raw disk in datastore store2/);
    assert.deepEqual((await readdir(storeDir)).sort(), ['imp.disk.json', 'imp.raw']);

    const notEmpty = await runFerry(['datastore', 'rm', 'store2'], env);
    assert.equal(notEmpty.code, 1);
    assert.match(notEmpty.stderr, /still holds 1 disk/);
    assert.equal((await runFerry(['disk', 'rm', 'imp'], env)).code, 0);
    const removedStore = await runFerry(['datastore', 'rm', 'store2', '--json'], env);
    assert.equal(removedStore.code, 0, removedStore.stderr);
    assert.deepEqual(JSON.parse(removedStore.stdout), { removed: 'store2' });

    const health = await fetch(`${serve.ready.apiUrl}/v1/health`);
    assert.equal(health.status, 200);
  } finally {
    serve.child.kill('SIGTERM');
    assert.equal(await serve.exited, 0, serve.logLines.join('\n'));
  }
  assert.ok(serve.logLines.some((line) => line.includes('"msg":"agent closed"')));
  await assert.rejects(access(join(dataDir, 'agent.lock')), { code: 'ENOENT' });
});

test('cli: a second ferry serve on the same data dir refuses to start', async () => {
  const dataDir = join(await makeTempDir(), 'data');
  const first = await startServe([
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  try {
    const second = await runFerry([
      'serve',
      '--data',
      dataDir,
      '--nbd',
      '127.0.0.1:0',
      '--api',
      '127.0.0.1:0',
    ]);
    assert.equal(second.code, 1);
    assert.match(second.stderr, /is in use by process/);
  } finally {
    first.child.kill('SIGINT');
    assert.equal(await first.exited, 0);
  }
});

test('cli: serve --disk creates a missing disk once and serves it across restarts', async () => {
  const dataDir = join(await makeTempDir(), 'data');
  const args = [
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
    '--disk',
    'vm1:4M',
  ];
  for (const round of [1, 2]) {
    const served = await startServe(args);
    try {
      const listed = await runFerry(['disk', 'list', '--json'], { FERRY_API: served.ready.apiUrl });
      assert.equal(listed.code, 0);
      const disks = JSON.parse(listed.stdout) as {
        name: string;
        sizeBytes: number;
        generation: number;
      }[];
      assert.deepEqual(
        disks.map((disk) => [disk.name, disk.sizeBytes, disk.generation]),
        [['vm1', 4 * 1024 * 1024, 1]],
        `round ${round}`,
      );
    } finally {
      served.child.kill('SIGTERM');
      assert.equal(await served.exited, 0);
    }
  }
  const bad = await runFerry(['serve', '--data', dataDir, '--disk', 'vm1:lots']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /NAME:SIZE/);
});
