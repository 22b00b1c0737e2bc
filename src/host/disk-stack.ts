import { openRawFile, type RawFileDevice } from '../block/raw-file.js';
import { Stats } from '../block/stats.js';
import { Switch } from '../block/switch.js';
import type { DiskDescriptor } from './descriptor.js';
import { HostError, HostErrorCode } from './errors.js';

/**
 * The device stack the agent serves for one disk, bottom to top:
 *
 *   raw file  →  Stats (guest I/O counters for the API)  →  Switch (the stun point)
 *
 * The export always serves `top`, so a migration re-points the Switch to a new stack below it
 * without the NBD server or its clients noticing (DESIGN.md, "switchover"). Stats sits below the
 * Switch so a paused guest shows up as no I/O rather than as I/O that hangs. Stats counts the
 * guest's requests only: a move's copy reads `raw` (migrate/migration.ts, `copySource`).
 */
export interface DiskStack {
  readonly raw: RawFileDevice;
  readonly stats: Stats;
  readonly top: Switch;
}

/**
 * Opens the image of `descriptor` at `imagePath`. Fails with `ERR_BAD_DESCRIPTOR` when the file's
 * size is not the size the descriptor records (the image was truncated or grown behind the
 * agent's back): serving it would show the guest a different disk.
 */
export async function openDiskStack(
  imagePath: string,
  descriptor: DiskDescriptor,
): Promise<DiskStack> {
  const raw = await openRawFile(imagePath, { provisioning: descriptor.provisioning });
  if (raw.size !== descriptor.sizeBytes) {
    await raw.close();
    throw new HostError(
      HostErrorCode.BadDescriptor,
      `image ${imagePath} is ${raw.size} bytes but its descriptor says ${descriptor.sizeBytes}`,
    );
  }
  const stats = new Stats(raw);
  return { raw, stats, top: new Switch(stats) };
}

/**
 * Flushes, then closes the stack from its top (each filter closes the device below it). The raw
 * file is closed again afterwards, which it allows, so a filter whose close fails cannot leak the
 * file descriptor. The first failure is rethrown after everything is closed: a failed flush at
 * close may mean acknowledged writes did not reach the disk, and the caller must say so.
 */
export async function closeDiskStack(stack: DiskStack): Promise<void> {
  const failures: unknown[] = [];
  if (stack.top.isPaused) {
    // Held guest I/O (a cross-host move whose outcome is unknown): the Switch would hold a
    // flush forever. What the guest was told is below it; flush that and leave the Switch.
    await stack.raw.flush().catch((error: unknown) => failures.push(error));
    await stack.raw.close().catch((error: unknown) => failures.push(error));
    if (failures.length > 0) throw failures[0];
    return;
  }
  await stack.top.flush().catch((error: unknown) => failures.push(error));
  await stack.top.close().catch((error: unknown) => failures.push(error));
  await stack.raw.close().catch((error: unknown) => failures.push(error));
  if (failures.length > 0) throw failures[0];
}
