import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryDevice } from '../../src/block/memory.js';
import { ExportTable } from '../../src/host/export-table.js';
import { LOCAL_ACCESS, PLAIN_ACCESS } from '../../src/nbd/exports.js';

test('export table: a disk arriving for a VM is seen on the local socket only', () => {
  const table = new ExportTable();
  const device = new MemoryDevice(4096);
  table.addIncoming({ name: 'web1-os', description: 'arriving', device });
  assert.equal(table.lookup('web1-os', LOCAL_ACCESS)?.device, device);
  assert.equal(table.lookup('web1-os', PLAIN_ACCESS), undefined, 'not over TCP');
  assert.equal(
    table.lookup('web1-os', { isTls: true, pskIdentity: 'ferry' }),
    undefined,
    'not to a peer either',
  );
  assert.deepEqual(
    table.list(LOCAL_ACCESS).map((entry) => entry.name),
    ['web1-os'],
  );
  assert.deepEqual(table.list(PLAIN_ACCESS), []);
  assert.ok(table.isTaken('web1-os'), 'its name is taken while it arrives');
  table.deleteIncoming('web1-os');
  assert.equal(table.lookup('web1-os', LOCAL_ACCESS), undefined);
});
