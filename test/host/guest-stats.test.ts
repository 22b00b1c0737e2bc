import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { StatsSnapshot } from '../../src/block/stats.js';
import { Agent } from '../../src/host/agent.js';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { prng, randomBytes } from '../migrate/harness.js';
import { makeTempDir } from './temp-dir.js';

const MIB = 1024 * 1024;

/**
 * A disk's I/O counters (the dashboard's IOPS and latency, Storage DRS's latency threshold) count
 * the guest's requests only: a move's copy reads the source below them. Checked on the source's
 * counters just before the switchover, when the copy has read everything and the guest nothing.
 */
for (const method of METHOD_NAMES) {
  test(`guest stats (${method}): a move's copy is not counted as guest I/O`, async () => {
    const dataDir = await makeTempDir();
    const fast = join(dataDir, 'fast-store');
    await mkdir(fast);
    const agent = await Agent.open({ dataDir });
    try {
      await agent.addDatastore('fast', fast);
      await agent.createDisk({ name: 'vm1', sizeBytes: 8 * MIB });
      const device = agent.exports.lookup('vm1')?.device;
      assert.ok(device);
      await device.write(MIB, randomBytes(4 * MIB, prng(3)));
      const before = agent.diskStats('vm1');
      let atSwitchover: StatsSnapshot | undefined;
      const move = await agent.moveDisk({ name: 'vm1', datastore: 'fast', method }, (event) => {
        if (event.type === 'phase' && event.phase === 'switchover') {
          atSwitchover ??= agent.diskStats('vm1');
        }
      });
      await move.done;
      assert.ok(atSwitchover, 'the move reached its switchover');
      for (const verb of ['read', 'extents', 'cache'] as const) {
        assert.equal(
          atSwitchover.verbs[verb].operations,
          before.verbs[verb].operations,
          `${verb} requests counted during the copy`,
        );
      }
      assert.equal(atSwitchover.verbs.write.operations, before.verbs.write.operations);
    } finally {
      await agent.close();
    }
  });
}
