import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { access, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { QemuSpec } from '../../../src/host/qemu/qemu-command-line.js';
import { QemuProcess } from '../../../src/host/qemu/qemu-process.js';

export const QEMU_BINARY = 'qemu-system-x86_64';
const MIB = 1024 * 1024;

/**
 * Why QEMU tests cannot run here, or undefined when they can. Outside CI a missing tool skips
 * the test with this reason; in CI (CI=true) it fails (STYLE.md, "Tests").
 */
export function missingTool(...tools: string[]): string | undefined {
  for (const tool of tools) {
    const probe = spawnSync(tool, ['--version'], { stdio: 'ignore', timeout: 10_000 });
    if (probe.error !== undefined || probe.status !== 0) {
      if (process.env.CI === 'true') throw new Error(`${tool} is required in CI but not runnable`);
      return `${tool} is not installed`;
    }
  }
  return undefined;
}

/** A small kernel-less VM (SeaBIOS finds nothing to boot and waits): all a QMP test needs. */
export function testSpec(dir: string, name: string, overrides: Partial<QemuSpec> = {}): QemuSpec {
  return {
    name,
    memoryBytes: 64 * MIB,
    cpus: 1,
    accel: 'tcg',
    disks: [],
    nics: [],
    qmpSocket: join(dir, `${name}.qmp`),
    serialLog: join(dir, `${name}.serial.log`),
    pidFile: join(dir, `${name}.pid`),
    ...overrides,
  };
}

/** Launches QEMU and kills it when the test ends, whatever the outcome. */
export async function launchForTest(t: TestContext, spec: QemuSpec): Promise<QemuProcess> {
  const qemu = await QemuProcess.launch(spec, { timeoutMs: 15_000 });
  t.after(() => qemu.kill(5_000));
  return qemu;
}

/**
 * `qemu-nbd` serving a fresh raw image of `sizeBytes` on a Unix socket, killed when the test
 * ends. `--persistent` so that it serves several QEMUs in turn (a migration's two ends).
 */
export async function startQemuNbd(
  t: TestContext,
  dir: string,
  exportName: string,
  sizeBytes = MIB,
): Promise<{ socket: string; child: ChildProcess }> {
  const image = join(dir, `${exportName}.raw`);
  const socket = join(dir, `${exportName}.nbd`);
  await writeFile(image, '');
  await truncate(image, sizeBytes);
  const child = spawn(
    'qemu-nbd',
    [
      '--format=raw',
      '--persistent',
      '--shared=4',
      `--socket=${socket}`,
      `--export-name=${exportName}`,
      image,
    ],
    { stdio: 'ignore' },
  );
  t.after(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });
  for (let attempt = 0; ; attempt += 1) {
    try {
      await access(socket);
      return { socket, child };
    } catch (error) {
      if (attempt >= 200)
        throw new Error(`qemu-nbd did not create ${socket} in 2 s`, { cause: error });
      await sleep(10);
    }
  }
}
