import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { access, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { QemuErrorCode } from '../../../src/host/qemu/qemu-errors.js';
import { QemuProcess } from '../../../src/host/qemu/qemu-process.js';
import { makeTempDir } from '../temp-dir.js';
import { launchForTest, missingTool, testSpec } from './qemu-harness.js';

const skip = missingTool('qemu-system-x86_64');

test('qemu process: launch runs QEMU daemonized; quit ends it and QEMU removes its pid file', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  const spec = testSpec(dir, 'vm1');
  const qemu = await launchForTest(t, spec);
  assert.equal(Number((await readFile(spec.pidFile, 'utf8')).trim()), qemu.pid);
  assert.equal(await qemu.status(), 'running');
  assert.equal(await qemu.quit(5_000), 'quit');
  assert.ok(qemu.hasExited);
  await qemu.exited;
  await assert.rejects(access(spec.pidFile), { code: 'ENOENT' });
});

test('qemu process: a failed start carries QEMU stderr and leaves nothing running', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  const nowhere = join(dir, 'no-nbd-server.sock');
  const spec = testSpec(dir, 'bad', {
    disks: [{ node: 'disk0', nbdSocket: nowhere, exportName: 'x', bus: 'virtio' }],
  });
  await assert.rejects(QemuProcess.launch(spec, { timeoutMs: 10_000 }), (error: Error) => {
    assert.equal((error as { code?: string }).code, QemuErrorCode.LaunchFailed);
    assert.match(error.message, /QEMU for VM bad failed to start \(exit 1\)/);
    assert.match(error.message, /Failed to connect to '.*no-nbd-server\.sock': No such file/);
    return true;
  });
  await assert.rejects(access(spec.pidFile), { code: 'ENOENT' });

  await assert.rejects(
    QemuProcess.launch(testSpec(dir, 'nobin'), { binary: join(dir, 'no-qemu') }),
    {
      code: QemuErrorCode.LaunchFailed,
      message: /ENOENT/,
    },
  );
});

test('qemu process: a second QEMU with the same pid file is refused (QEMU locks it)', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  const first = testSpec(dir, 'vm1', { startPaused: true });
  await launchForTest(t, first);
  const second = testSpec(dir, 'vm2', { startPaused: true, pidFile: first.pidFile });
  await assert.rejects(QemuProcess.launch(second, { timeoutMs: 10_000 }), {
    code: QemuErrorCode.LaunchFailed,
    message: /Cannot lock pid file/,
  });
});

test('qemu process: after an agent restart, attach adopts the running QEMU', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  const spec = testSpec(dir, 'vm1', { startPaused: true });
  const launched = await launchForTest(t, spec);
  await launched.release();
  const adopted = await QemuProcess.attach({ pidFile: spec.pidFile, qmpSocket: spec.qmpSocket });
  assert.ok(adopted);
  t.after(() => adopted.kill(5_000));
  assert.equal(adopted.pid, launched.pid);
  assert.equal(await adopted.status(), 'prelaunch');
  // Killed from outside (not our child): exited still resolves, from QMP close + pid polling.
  process.kill(adopted.pid, 'SIGKILL');
  await adopted.exited;
  assert.ok(adopted.hasExited);
});

test('qemu process: attach adopts nothing from a missing, dead or recycled pid', async (t) => {
  const dir = await makeTempDir('ferry-qemu-');
  const qmpSocket = join(dir, 'vm.qmp');
  const pidFile = join(dir, 'vm.pid');
  assert.equal(await QemuProcess.attach({ pidFile, qmpSocket }), undefined);

  const done = spawn('true');
  await once(done, 'exit');
  await writeFile(pidFile, `${done.pid}\n`);
  assert.equal(await QemuProcess.attach({ pidFile, qmpSocket }), undefined);
  await assert.rejects(access(pidFile), { code: 'ENOENT' });

  // A live pid that is not QEMU (this test runner) must not be adopted.
  await writeFile(pidFile, `${process.pid}\n`);
  assert.equal(await QemuProcess.attach({ pidFile, qmpSocket }), undefined);
  await assert.rejects(access(pidFile), { code: 'ENOENT' });
  if (skip !== undefined) return t.skip(skip);

  // A live QEMU, but another VM's (its -qmp names another socket).
  const other = testSpec(dir, 'other', { startPaused: true });
  const qemu = await launchForTest(t, other);
  await writeFile(pidFile, `${qemu.pid}\n`);
  assert.equal(await QemuProcess.attach({ pidFile, qmpSocket }), undefined);
  assert.equal(await qemu.status(), 'prelaunch');
});

test('qemu process: powerdown falls back to quit when the guest ignores ACPI', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  // SeaBIOS with nothing to boot has no ACPI handler: the power button is ignored.
  const ignoring = await launchForTest(t, testSpec(dir, 'vm1'));
  assert.equal(await ignoring.powerdown({ timeoutMs: 300 }), 'quit');
  const told = await launchForTest(t, testSpec(dir, 'vm2'));
  assert.equal(await told.powerdown({ timeoutMs: 60_000, isAcpiAware: false }), 'quit');
  await Promise.all([ignoring.exited, told.exited]);
});

test('qemu process: kill ends QEMU at once; a relaunch reuses its stale socket', async (t) => {
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  const spec = testSpec(dir, 'vm1');
  const qemu = await launchForTest(t, spec);
  await qemu.kill(5_000);
  assert.ok(qemu.hasExited);
  await assert.rejects(qemu.status(), { code: QemuErrorCode.QmpClosed });
  // SIGKILL left the QMP socket and pid file behind; QEMU replaces them.
  await access(spec.qmpSocket);
  const again = await launchForTest(t, spec);
  assert.equal(await again.status(), 'running');
});
