import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { makeTempDir } from '../host/temp-dir.js';
import { runFerry, type ServeProcess, startServe } from './ferry-process.js';

const VERSION: string = JSON.parse(
  await readFile(new URL('../../../package.json', import.meta.url), 'utf8'),
).version;

async function startHost(dir: string, name: string): Promise<ServeProcess> {
  const serve = await startServe([
    '--data',
    join(dir, name),
    '--name',
    name,
    '--nbd',
    '127.0.0.1:0',
    '--api',
    '127.0.0.1:0',
  ]);
  after(async () => {
    serve.child.kill('SIGTERM');
    await serve.exited;
  });
  return serve;
}

test('cli host: --help shows how to make and share a key', async () => {
  const help = await runFerry(['host', 'add', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /psktool -u ferry -p \/etc\/ferry\/keys\.psk/);
  assert.match(help.stdout, /--key-file <file>/);
  assert.match(help.stdout, /--identity <id>/);
  const top = await runFerry(['--help']);
  assert.match(top.stdout, /ferry host add hostb http:\/\/hostb:7480 --key-file/);
});

test('cli host: serve refuses a bad --name as a usage error', async () => {
  const dir = await makeTempDir();
  const result = await runFerry(['serve', '--data', dir, '--name', '.bad', '--api', '127.0.0.1:0']);
  assert.equal(result.code, 2, result.stderr);
  assert.match(result.stderr, /not a valid host name/);
});

test('cli host: two ferry serve add each other; list, show and rm', async () => {
  const dir = await makeTempDir();
  const keyFile = join(dir, 'keys.psk');
  const line = (identity: string) => `${identity}:${randomBytes(32).toString('hex')}`;
  await writeFile(keyFile, `# made by psktool\n${line('spare')}\n${line('ferry')}\n`);
  const [alpha, beta] = await Promise.all([startHost(dir, 'alpha'), startHost(dir, 'beta')]);
  assert.equal((alpha.ready as unknown as { host: string }).host, 'alpha');
  const onAlpha = { FERRY_API: alpha.ready.apiUrl };
  const onBeta = { FERRY_API: beta.ready.apiUrl };

  const missingFile = await runFerry(
    ['host', 'add', 'beta', beta.ready.apiUrl, '--key-file', join(dir, 'absent.psk')],
    onAlpha,
  );
  assert.equal(missingFile.code, 2, missingFile.stderr);
  assert.match(missingFile.stderr, /cannot read the key file/);
  const noIdentity = await runFerry(
    ['host', 'add', 'beta', beta.ready.apiUrl, '--key-file', keyFile, '--identity', 'nope'],
    onAlpha,
  );
  assert.equal(noIdentity.code, 2, noIdentity.stderr);
  assert.match(noIdentity.stderr, /no key for the identity nope; it holds: spare, ferry/);

  const first = await runFerry(
    ['host', 'add', 'beta', beta.ready.apiUrl, '--key-file', keyFile, '--identity', 'ferry'],
    onAlpha,
  );
  assert.equal(first.code, 0, first.stderr);
  assert.match(first.stdout, /Added host beta at http:\/\/127\.0\.0\.1:\d+ \(key identity ferry\)/);
  assert.match(first.stderr, /note: .*no key for the identity ferry: add this host there/);

  const second = await runFerry(
    ['host', 'add', 'alpha', alpha.ready.apiUrl, '--key-file', keyFile, '--identity', 'ferry'],
    onBeta,
  );
  assert.equal(second.code, 0, second.stderr);
  assert.ok(
    second.stdout.includes(`It is alpha, Ferry ${VERSION}, with datastores local (`),
    second.stdout,
  );

  const listed = await runFerry(['host', 'list'], onAlpha);
  assert.equal(listed.code, 0, listed.stderr);
  const lines = listed.stdout.trimEnd().split('\n');
  assert.match(lines[0] ?? '', /^NAME\s+URL\s+REACHABLE\s+VERSION\s+DATASTORES$/);
  assert.equal(lines.length, 2, listed.stdout);
  const row = new RegExp(
    `^beta\\s+${beta.ready.apiUrl.replace(/\./g, '\\.')}\\s+yes\\s+${VERSION.replace(/\./g, '\\.')}\\s+local \\(\\S+ free\\)$`,
  );
  assert.match(lines[1] ?? '', row);

  const json = await runFerry(['host', 'list', '--json'], onAlpha);
  const [entry] = JSON.parse(json.stdout) as { host: string; reachable: boolean }[];
  assert.equal(entry?.host, 'beta');
  assert.equal(entry?.reachable, true);

  const shown = await runFerry(['host', 'show', 'beta'], onAlpha);
  assert.equal(shown.code, 0, shown.stderr);
  assert.match(shown.stdout, /reachable:\s+yes/);
  assert.match(shown.stdout, /calls itself:\s+beta/);
  assert.match(shown.stdout, /key identity:\s+ferry/);
  const absent = await runFerry(['host', 'show', 'nope'], onAlpha);
  assert.equal(absent.code, 1);
  assert.match(absent.stderr, /no host named nope/);

  const badUrl = await runFerry(
    ['host', 'add', 'gamma', 'gamma:7480', '--key-file', keyFile],
    onAlpha,
  );
  assert.equal(badUrl.code, 2, badUrl.stderr);
  assert.match(badUrl.stderr, /use http:\/\/HOST:PORT/);

  const removed = await runFerry(['host', 'rm', 'beta'], onAlpha);
  assert.equal(removed.code, 0, removed.stderr);
  assert.match(removed.stdout, /Removed host beta/);
  const empty = await runFerry(['host', 'list'], onAlpha);
  assert.match(empty.stdout, /No hosts; add one with: ferry host add/);
  const again = await runFerry(['host', 'rm', 'beta'], onAlpha);
  assert.equal(again.code, 1);
});
