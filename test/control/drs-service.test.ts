import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryDevice } from '../../src/block/memory.js';
import { Stats } from '../../src/block/stats.js';
import { ClusterErrorCode, ClusterStore } from '../../src/control/clusters.js';
import { openDatabase } from '../../src/control/database.js';
import { type DrsAgent, DrsService } from '../../src/control/drs-service.js';
import type { JobListener, JobManager, MigrationRequest } from '../../src/control/job-manager.js';
import type { DatastoreInfo, DiskInfo } from '../../src/host/disk-info.js';

const MiB = 1024 * 1024;

/** An agent with datastores and disks in memory: moves happen when the fake jobs say so. */
class FakeAgent implements DrsAgent {
  readonly disks = new Map<string, { datastore: string; sizeBytes: number; stats: Stats }>();
  constructor(readonly datastores: readonly string[]) {}

  addDisk(name: string, datastore: string, sizeBytes: number): void {
    this.disks.set(name, { datastore, sizeBytes, stats: new Stats(new MemoryDevice(4096)) });
  }

  async listDatastores(): Promise<DatastoreInfo[]> {
    return this.datastores.map((name) => ({
      name,
      path: `/srv/${name}`,
      isAvailable: true,
      // All on one file system: statfs says nothing about any one of them.
      capacityBytes: 1000 * MiB,
      freeBytes: 500 * MiB,
      diskCount: [...this.disks.values()].filter((disk) => disk.datastore === name).length,
    }));
  }

  async listDisks(): Promise<DiskInfo[]> {
    return [...this.disks].map(([name, disk]) => ({
      name,
      datastore: disk.datastore,
      sizeBytes: disk.sizeBytes,
      provisioning: 'thin',
      allocatedBytes: 0,
      generation: 1,
      image: `/srv/${disk.datastore}/${name}.raw`,
      createdAt: new Date(0).toISOString(),
      host: null,
    }));
  }

  async listVms() {
    return [];
  }

  diskStats(name: string) {
    const disk = this.disks.get(name);
    if (disk === undefined) throw new Error(`no disk ${name}`);
    return disk.stats.snapshot();
  }
}

/** Records the moves asked for and performs them at once on the fake agent. */
function fakeJobs(agent: FakeAgent): {
  jobs: JobManager;
  started: MigrationRequest[];
  running: object[];
  listeners: Set<JobListener>;
} {
  const started: MigrationRequest[] = [];
  const running: object[] = [];
  const listeners = new Set<JobListener>();
  const jobs = {
    list: () => running,
    subscribe: (listener: JobListener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    startMigration: async (request: MigrationRequest) => {
      if (request.disk?.startsWith('stuck')) throw new Error(`disk ${request.disk} is busy`);
      started.push(request);
      const disk = agent.disks.get(request.disk ?? '');
      assert.ok(disk, 'a disk move');
      disk.datastore = request.datastore ?? disk.datastore;
      return { id: `job-${started.length}`, disk: request.disk } as never;
    },
  } as unknown as JobManager;
  return { jobs, started, running, listeners };
}

function setUp(datastores: readonly string[]) {
  const agent = new FakeAgent(datastores);
  const store = new ClusterStore(openDatabase(':memory:'));
  const { jobs, started, running, listeners } = fakeJobs(agent);
  const service = new DrsService(agent, store, jobs);
  return { agent, store, service, started, running, listeners };
}

describe('DrsService', () => {
  it('counts a configured capacity against the provisioned size of the disks on it', async () => {
    const { agent, store, service } = setUp(['a', 'b']);
    agent.addDisk('d1', 'a', 30 * MiB);
    store.setCapacity('a', 100 * MiB);
    const usage = await service.usage();
    const a = usage.find((one) => one.name === 'a');
    const b = usage.find((one) => one.name === 'b');
    assert.deepEqual([a?.capacityBytes, a?.usedBytes], [100 * MiB, 30 * MiB]);
    // Without one, the file system's numbers.
    assert.deepEqual([b?.capacityBytes, b?.usedBytes], [1000 * MiB, 500 * MiB]);
  });

  it('places a new disk on the emptiest member, refuses maintenance, and passes datastores through', async () => {
    const { agent, store, service } = setUp(['a', 'b', 'c']);
    for (const name of ['a', 'b', 'c']) store.setCapacity(name, 100 * MiB);
    agent.addDisk('d1', 'a', 10 * MiB);
    agent.addDisk('d2', 'b', 20 * MiB);
    store.create('gold', ['a', 'b', 'c'], {});
    assert.equal(await service.placeNewDisk('gold', 10 * MiB), 'c');
    store.setMaintenance('c', 'on');
    assert.equal(await service.placeNewDisk('gold', 10 * MiB), 'a');
    assert.equal(await service.placeNewDisk('b', 10 * MiB), 'b');
    await assert.rejects(service.placeNewDisk('c', MiB), {
      code: ClusterErrorCode.Maintenance,
      message: /ferry datastore maintenance c --exit/,
    });
    await assert.rejects(service.placeNewDisk('gold', 75 * MiB), {
      code: ClusterErrorCode.BadSetting,
    });
  });

  it('drains a datastore in maintenance and turns it on once empty', async () => {
    const { agent, store, service, started } = setUp(['a', 'b']);
    agent.addDisk('d1', 'a', 10 * MiB);
    agent.addDisk('d2', 'a', 10 * MiB);
    await assert.rejects(service.enterMaintenance('a'), /in no cluster/);
    store.create('pair', ['a', 'b'], {});
    const entered = await service.enterMaintenance('a');
    assert.equal(entered.state, 'entering');
    assert.deepEqual(started.map((one) => [one.disk, one.datastore]).sort(), [
      ['d1', 'b'],
      ['d2', 'b'],
    ]);
    await service.tick();
    assert.equal(store.maintenanceOf('a'), 'on');
    assert.equal(service.exitMaintenance('a'), 'off');
    assert.throws(() => service.exitMaintenance('a'), /not in maintenance/);
    await assert.rejects(service.enterMaintenance('nope'), { code: ClusterErrorCode.NotFound });
  });

  it('turns maintenance on when the job that emptied the datastore ends, not at the next tick', async () => {
    const { agent, store, service, listeners } = setUp(['a', 'b']);
    store.create('pair', ['a', 'b'], {});
    agent.addDisk('d1', 'a', 10 * MiB);
    store.setMaintenance('a', 'entering');
    const ended = (from: string) =>
      ({ type: 'state', job: { id: 'j1', state: 'succeeded', from } }) as never;
    const settled = () => new Promise((resolve) => setTimeout(resolve, 20));
    service.start();
    try {
      assert.equal(listeners.size, 1, 'the service listens to the jobs once started');
      // A job off another datastore ends: `a` still holds d1.
      for (const listener of listeners) listener(ended('b'));
      await settled();
      assert.equal(store.maintenanceOf('a'), 'entering');
      // A job off `a` ends while d1 is still there: still entering.
      for (const listener of listeners) listener(ended('a'));
      await settled();
      assert.equal(store.maintenanceOf('a'), 'entering');
      // The job that moved d1 off `a` ends: `a` is empty, and on at once.
      const d1 = agent.disks.get('d1');
      assert.ok(d1);
      d1.datastore = 'b';
      for (const listener of listeners) listener(ended('a'));
      await settled();
      assert.equal(store.maintenanceOf('a'), 'on');
    } finally {
      service.stop();
    }
    assert.equal(listeners.size, 0, 'stop unsubscribes');
  });

  it('applies an automatic cluster on its interval, and leaves a manual one alone', async () => {
    const { agent, store, service, started } = setUp(['a', 'b']);
    for (const name of ['a', 'b']) store.setCapacity(name, 100 * MiB);
    agent.addDisk('d1', 'a', 50 * MiB);
    agent.addDisk('d2', 'a', 40 * MiB);
    store.create('pair', ['a', 'b'], { intervalSeconds: 60 });
    await service.tick(1_000_000);
    assert.deepEqual(started, []);
    store.update('pair', { automation: 'automatic' });
    await service.tick(1_000_000);
    assert.deepEqual(started, [{ disk: 'd2', datastore: 'b' }]);
    // Over again, but within the interval: nothing; after it: the next move.
    agent.addDisk('d3', 'a', 40 * MiB);
    await service.tick(1_030_000);
    assert.equal(started.length, 1);
    await service.tick(1_061_000);
    assert.equal(started.length, 2);
    assert.deepEqual((await service.recommendations('pair')).recommendations, []);
  });

  it('counts a running move at its destination and leaves its disk alone', async () => {
    const { agent, store, service, running } = setUp(['a', 'b']);
    for (const name of ['a', 'b']) store.setCapacity(name, 100 * MiB);
    agent.addDisk('d1', 'a', 50 * MiB);
    agent.addDisk('d2', 'a', 40 * MiB);
    store.create('pair', ['a', 'b'], {});
    assert.equal((await service.recommendations('pair')).recommendations.length, 1);
    running.push({ state: 'running', disk: 'd2', disks: ['d2'], from: 'a', to: 'b' });
    // a is at 50% once d2 lands on b: nothing more to do.
    assert.deepEqual(await service.recommendations('pair'), { recommendations: [], problems: [] });
  });

  it('reports a move that cannot start, and tries it again a minute later, not every tick', async () => {
    const { agent, store, service, started } = setUp(['a', 'b']);
    agent.addDisk('d1', 'a', 10 * MiB);
    agent.addDisk('stuck1', 'a', 10 * MiB);
    store.create('pair', ['a', 'b'], {});
    const entered = await service.enterMaintenance('a');
    assert.equal(entered.state, 'entering');
    assert.deepEqual(started, [{ disk: 'd1', datastore: 'b' }]);
    assert.equal(entered.problems.length, 1);
    assert.match(entered.problems[0] ?? '', /could not start moving disk stuck1 to b: .*busy/);
    // Unblock it: a tick inside the minute leaves it; one after it moves it.
    agent.disks.set('d2', agent.disks.get('stuck1')!);
    agent.disks.delete('stuck1');
    const t0 = Date.now();
    await service.tick(t0 + 1000);
    assert.equal(started.length, 1);
    assert.equal(store.maintenanceOf('a'), 'entering');
    await service.tick(t0 + 61_000);
    assert.deepEqual(started[1], { disk: 'd2', datastore: 'b' });
    await service.tick(t0 + 62_000);
    assert.equal(store.maintenanceOf('a'), 'on');
  });
});
