/**
 * What the write-intent bitmap of a resumable move costs the guest (issue 10, copy-state.ts):
 * random writes, 8 in flight, on a raw file for a few seconds, bare and through the
 * `WriteIntentFilter` whose state persists to a file next to it (atomic replace: temp, fsync,
 * rename, fsync the directory), with a checkpoint every second as a migration makes (its target
 * flush left out: the move pays it anyway). Run: `node dist/bench/write-intent.js [DIR]`; DIR
 * (default: a temporary directory) should be on the file system a data dir would use.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { BlockDevice } from '../src/block/device.js';
import { createRawImage, openRawFile } from '../src/block/raw-file.js';
import { CopyStateFile } from '../src/host/copy-state-file.js';
import { WriteIntentFilter } from '../src/migrate/write-intent.js';

const MiB = 1024 * 1024;
const SIZE_BYTES = 1024 * MiB;
const RUN_MS = 4000;
const IN_FLIGHT = 8;
const WRITE_BYTES = 4096;

interface Outcome {
  readonly writesPerSecond: number;
  readonly meanUs: number;
  readonly p99Us: number;
}

async function drive(device: BlockDevice, spanBytes: number): Promise<Outcome> {
  const latencies: number[] = [];
  const data = Buffer.alloc(WRITE_BYTES, 7);
  const endMs = performance.now() + RUN_MS;
  let seed = 1;
  const worker = async (): Promise<void> => {
    while (performance.now() < endMs) {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      const offset = (seed % (spanBytes / WRITE_BYTES)) * WRITE_BYTES;
      const startedMs = performance.now();
      await device.write(offset, data);
      latencies.push((performance.now() - startedMs) * 1000);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  latencies.sort((a, b) => a - b);
  const sum = latencies.reduce((total, each) => total + each, 0);
  return {
    writesPerSecond: Math.round((latencies.length * 1000) / RUN_MS),
    meanUs: Math.round(sum / latencies.length),
    p99Us: Math.round(latencies[Math.floor(latencies.length * 0.99)] ?? 0),
  };
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(process.argv[2] ?? tmpdir(), 'ferry-intent-'));
  try {
    const imagePath = join(dir, 'disk.raw');
    await createRawImage(imagePath, SIZE_BYTES, 'thin');
    const raw = await openRawFile(imagePath, { provisioning: 'thin' });
    for (const [label, spanBytes] of [
      ['hot 16 MiB', 16 * MiB],
      ['whole 1 GiB', SIZE_BYTES],
    ] as const) {
      const bare = await drive(raw, spanBytes);
      const file = await CopyStateFile.create(
        join(dir, 'move.bitmap'),
        [{ disk: 'disk', provisioning: 'thin', sizeBytes: SIZE_BYTES }],
        64 * 1024,
      );
      const state = file.stateOf('disk');
      if (state === undefined) throw new Error('no state');
      state.startTracking();
      const timer = setInterval(() => void state.checkpoint(async () => {}), 1000);
      const filtered = await drive(new WriteIntentFilter(raw, state), spanBytes);
      clearInterval(timer);
      console.log(
        JSON.stringify({
          writes: label,
          regionBytes: state.shape.intentRegionBytes,
          bare,
          withIntent: filtered,
          persists: state.persists,
          writesThatWaited: state.writesWaited,
          persistsPerSecond: Math.round((state.persists * 1000) / RUN_MS),
        }),
      );
      await file.remove();
    }
    await raw.close();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();
