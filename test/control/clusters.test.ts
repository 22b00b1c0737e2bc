import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ClusterErrorCode, ClusterStore } from '../../src/control/clusters.js';
import { openDatabase } from '../../src/control/database.js';

describe('ClusterStore', () => {
  it('keeps clusters, members, maintenance and capacities across a reopen', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ferry-clusters-'));
    try {
      const path = join(dir, 'ferry.db');
      let db = openDatabase(path);
      let store = new ClusterStore(db);
      store.create('gold', ['a', 'b'], { spaceThreshold: 0.7 });
      store.setMaintenance('a', 'entering');
      store.setCapacity('b', 1024);
      db.close();
      db = openDatabase(path);
      store = new ClusterStore(db);
      assert.deepEqual(store.get('gold'), {
        name: 'gold',
        datastores: ['a', 'b'],
        spaceThreshold: 0.7,
        latencyThresholdMs: 15,
        automation: 'manual',
        intervalSeconds: 300,
        keepVmDisksTogether: true,
      });
      assert.equal(store.clusterOf('a'), 'gold');
      assert.equal(store.maintenanceOf('a'), 'entering');
      assert.equal(store.maintenanceOf('b'), 'off');
      assert.equal(store.capacityOf('b'), 1024);
      store.setMaintenance('a', 'on');
      assert.equal(store.maintenanceOf('a'), 'on');
      store.setMaintenance('a', 'off');
      assert.equal(store.maintenanceOf('a'), 'off');
      db.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('puts a datastore in at most one cluster and refuses bad settings with what to do', () => {
    const store = new ClusterStore(openDatabase(':memory:'));
    store.create('gold', ['a', 'b'], {});
    assert.throws(() => store.create('silver', ['c', 'b'], {}), {
      code: ClusterErrorCode.Exists,
      message: /datastore b is already in cluster gold.*ferry cluster set gold/,
    });
    // The failed create left nothing behind: c is free, silver does not exist.
    assert.equal(store.clusterOf('c'), null);
    assert.equal(store.has('silver'), false);
    assert.throws(() => store.create('gold', ['c'], {}), { code: ClusterErrorCode.Exists });
    assert.throws(() => store.create('x', [], {}), { code: ClusterErrorCode.BadSetting });
    assert.throws(() => store.create('x', ['c', 'c'], {}), { code: ClusterErrorCode.BadSetting });
    assert.throws(() => store.create('x', ['c'], { spaceThreshold: 1.5 }), {
      code: ClusterErrorCode.BadSetting,
      message: /fraction in \(0, 1\]/,
    });
    assert.throws(() => store.update('gold', { intervalSeconds: 0 }), {
      code: ClusterErrorCode.BadSetting,
    });
    assert.throws(() => store.get('nope'), {
      code: ClusterErrorCode.NotFound,
      message: /ferry cluster list/,
    });
    const changed = store.update('gold', { automation: 'automatic', intervalSeconds: 5 }, [
      'b',
      'c',
    ]);
    assert.deepEqual(changed.datastores, ['b', 'c']);
    assert.equal(changed.automation, 'automatic');
    assert.equal(store.clusterOf('a'), null);
    store.remove('gold');
    assert.equal(store.clusterOf('b'), null);
    assert.deepEqual(store.list(), []);
  });
});
