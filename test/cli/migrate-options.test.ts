import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDurationMs, parseNameMap } from '../../src/cli/migrate-command.js';

test('migrate options: --network-map and --datastore-map pairs, --max-downtime times', () => {
  assert.deepEqual(parseNameMap('br0=br1'), { br0: 'br1' });
  assert.deepEqual(parseNameMap('a=b,c=d'), { a: 'b', c: 'd' });
  for (const bad of ['br0', 'br0=', '=br1', 'a=b=c', 'a=b,,c=d']) {
    assert.throws(() => parseNameMap(bad), /SRC=DST/, bad);
  }
  assert.equal(parseDurationMs('300ms'), 300);
  assert.equal(parseDurationMs('1s'), 1000);
  assert.equal(parseDurationMs('1.5s'), 1500);
  assert.equal(parseDurationMs('250'), 250);
  for (const bad of ['0ms', 'fast', '-1s', '11m', '700s']) {
    assert.throws(() => parseDurationMs(bad), /300ms or 1s/, bad);
  }
});
