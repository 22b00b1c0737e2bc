import assert from 'node:assert/strict';
import { join } from 'node:path';
import { type TestContext, test } from 'node:test';
import {
  announceSelf,
  cancelMigration,
  continueMigration,
  enableMigrationCapabilities,
  type MigrationInfo,
  setMigrationParameters,
  startIncoming,
  startMigration,
  waitForMigrationStatus,
} from '../../../src/host/qemu/live-migration.js';
import { QemuErrorCode } from '../../../src/host/qemu/qemu-errors.js';
import type { QemuProcess } from '../../../src/host/qemu/qemu-process.js';
import type { QmpClient } from '../../../src/host/qemu/qmp-client.js';
import { makeTempDir } from '../temp-dir.js';
import { launchForTest, missingTool, startQemuNbd, testSpec } from './qemu-harness.js';

const skip = missingTool('qemu-system-x86_64', 'qemu-nbd');
const WAIT_MS = 15_000;

interface Pair {
  readonly source: QemuProcess;
  readonly target: QemuProcess;
  readonly uri: string;
  /** MIGRATION statuses in the order each side announced them. */
  readonly sourceStatuses: string[];
  readonly targetStatuses: string[];
}

/**
 * A running source (SeaBIOS spinning: no guest needed to move memory) and a destination waiting
 * with `-incoming defer`, both on one NBD disk the way Ferry serves it, migrating over a Unix
 * socket up to `pre-switchover`.
 */
async function migrateToPreSwitchover(t: TestContext): Promise<Pair> {
  const dir = await makeTempDir('ferry-migrate-');
  const nbd = await startQemuNbd(t, dir, 'disk');
  const disks = [
    { node: 'disk0', nbdSocket: nbd.socket, exportName: 'disk', bus: 'virtio' as const },
  ];
  const [source, target] = await Promise.all([
    launchForTest(t, testSpec(dir, 'source', { disks })),
    launchForTest(t, testSpec(dir, 'target', { disks, incoming: 'defer' })),
  ]);
  assert.equal(await target.status(), 'inmigrate');
  const uri = `unix:${join(dir, 'migrate.sock')}`;
  const pair = { source, target, uri, sourceStatuses: [], targetStatuses: [] };
  record(source.qmp, pair.sourceStatuses);
  record(target.qmp, pair.targetStatuses);

  await enableMigrationCapabilities(target.qmp, { pauseBeforeSwitchover: false, events: true });
  await startIncoming(target.qmp, uri);
  await enableMigrationCapabilities(source.qmp, {
    pauseBeforeSwitchover: true,
    autoConverge: false,
    events: true,
  });
  await setMigrationParameters(source.qmp, {
    downtimeLimitMs: 500,
    maxBandwidthBytes: 1024 * 1024 * 1024,
  });
  const params = await source.qmp.execute<Record<string, unknown>>('query-migrate-parameters');
  assert.equal(params['downtime-limit'], 500);
  assert.equal(params['max-bandwidth'], 1024 * 1024 * 1024);

  const progress: MigrationInfo[] = [];
  const paused = waitForMigrationStatus(source.qmp, ['pre-switchover'], {
    timeoutMs: WAIT_MS,
    pollIntervalMs: 50,
    onProgress: (info) => progress.push(info),
  });
  await startMigration(source.qmp, uri);
  const info = await paused;
  assert.equal(info.status, 'pre-switchover');
  // Pre-switchover: the source's CPUs are stopped, its last state not yet sent.
  assert.equal(await source.status(), 'finish-migrate');
  assert.equal(await target.status(), 'inmigrate');
  t.diagnostic(`query-migrate at pre-switchover: ${JSON.stringify(info)}`);
  return pair;
}

function record(qmp: QmpClient, statuses: string[]): void {
  qmp.onEvent((event) => {
    if (event.event === 'MIGRATION') statuses.push(String(event.data.status));
  });
}

test('live migration: pause before switchover, continue, the destination runs', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const { source, target, sourceStatuses, targetStatuses } = await migrateToPreSwitchover(t);
  const resumed = target.qmp.waitForEvent('RESUME', { timeoutMs: WAIT_MS });
  await continueMigration(source.qmp);
  const [sourceInfo, targetInfo] = await Promise.all([
    waitForMigrationStatus(source.qmp, ['completed'], { timeoutMs: WAIT_MS }),
    waitForMigrationStatus(target.qmp, ['completed'], { timeoutMs: WAIT_MS }),
  ]);
  await resumed;
  assert.equal(sourceInfo.status, 'completed');
  assert.equal(typeof sourceInfo.downtime, 'number');
  assert.equal(typeof sourceInfo['total-time'], 'number');
  assert.ok((sourceInfo.ram?.total ?? 0) >= 64 * 1024 * 1024);
  assert.ok((sourceInfo.ram?.transferred ?? 0) > 0);
  assert.equal(targetInfo.status, 'completed');
  assert.equal(await target.status(), 'running');
  assert.equal(await source.status(), 'postmigrate');
  assert.deepEqual(sourceStatuses, ['setup', 'active', 'pre-switchover', 'device', 'completed']);
  assert.deepEqual(targetStatuses, ['setup', 'active', 'completed']);
  t.diagnostic(`source completed: ${JSON.stringify(sourceInfo)}`);
  await announceSelf(target.qmp, { rounds: 1 });
  await source.quit(5_000);
});

test('live migration: cancel at pre-switchover, the source runs on', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const { source, target, sourceStatuses } = await migrateToPreSwitchover(t);
  await cancelMigration(source.qmp);
  const info = await waitForMigrationStatus(source.qmp, ['cancelled'], { timeoutMs: WAIT_MS });
  assert.equal(info.status, 'cancelled');
  // QEMU resumes a source that was running before the migration stopped it.
  const state = await source.status();
  if (state !== 'running') await source.qmp.execute('cont');
  assert.equal(await source.status(), 'running');
  t.diagnostic(`source after cancel: ${state}; statuses ${sourceStatuses.join(' → ')}`);
  // The destination's incoming stream broke: QEMU exits by itself; quit covers either case.
  await target.quit(5_000);
  assert.ok(target.hasExited);
});

test('live migration: a failure is reported with QEMU error-desc', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-migrate-');
  const source = await launchForTest(t, testSpec(dir, 'source', { startPaused: true }));
  await enableMigrationCapabilities(source.qmp, { pauseBeforeSwitchover: true, events: true });
  const done = waitForMigrationStatus(source.qmp, ['completed'], { timeoutMs: WAIT_MS });
  // QEMU 7.2 accepts `migrate` and connects afterwards: the refusal comes as status failed.
  await startMigration(source.qmp, `unix:${join(dir, 'nobody-listens.sock')}`);
  await assert.rejects(done, (error: Error) => {
    assert.equal((error as { code?: string }).code, QemuErrorCode.MigrationFailed);
    assert.match(error.message, /ended in failed while waiting for completed: .*nobody-listens/);
    return true;
  });
  assert.equal(await source.status(), 'prelaunch');
});
