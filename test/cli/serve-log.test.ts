/**
 * `ferry serve --log-format`: JSON lines when stderr is not a terminal (auto, what every other
 * serve test reads), human lines with `pretty`, and a bad value refused as usage.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { test } from 'node:test';
import { makeTempDir } from '../host/temp-dir.js';
import { FERRY_BIN, runFerry, startServe } from './ferry-process.js';

const PORTS = ['--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'];

test('serve --log-format pretty: readable lines, the ready line with its addresses', async () => {
  const dir = await makeTempDir('ferry-serve-log-');
  const child = spawn(
    process.execPath,
    [FERRY_BIN, 'serve', '--data', join(dir, 'data'), ...PORTS, '--log-format', 'pretty'],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const exited = once(child, 'exit');
  const lines: string[] = [];
  const ready = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stderr }).on('line', (line) => {
      lines.push(line);
      // The fields follow the message, one `key: value` line each.
      const port = /^\s+apiPort: (\d+)$/.exec(line);
      if (port && lines.some((seen) => /^\[\d\d:\d\d:\d\d\.\d{3}\] INFO: ready$/.test(seen))) {
        resolve(Number(port[1]));
      }
    });
    void exited.then(() => reject(new Error(`serve exited:\n${lines.join('\n')}`)));
  });
  assert.ok(ready > 0);
  assert.ok(
    lines.some((line) => /INFO: agent: agent opened$/.test(line)),
    lines.join('\n'),
  );
  assert.ok(
    lines.every((line) => !line.startsWith('{')),
    'no JSON line',
  );
  child.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0);
});

test('serve: JSON lines when stderr is not a terminal; --log-format json too', async () => {
  for (const extra of [[], ['--log-format', 'json']]) {
    const dir = await makeTempDir('ferry-serve-log-');
    const serve = await startServe(['--data', join(dir, 'data'), ...PORTS, ...extra]);
    assert.ok(serve.ready.apiPort > 0);
    for (const line of serve.logLines) assert.doesNotThrow(() => JSON.parse(line), line);
    serve.child.kill('SIGTERM');
    assert.equal(await serve.exited, 0);
  }
  const bad = await runFerry(['serve', '--log-format', 'fancy']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--log-format.*fancy.*auto, json, pretty/);
});
