import { performance } from 'node:perf_hooks';
import type { BlockDevice } from '../block/device.js';

/**
 * The demo's guest: `depth` loops of 4 KiB random writes through an NBD connection, like a
 * database on a VM, each loop in its own stripe of the disk (two writes to one block in flight at
 * once have no defined result). `model` holds what every acknowledged write put there, so the
 * demo can check the disk byte for byte after each migration. Counts completions and the slowest
 * write of a window, the number a guest feels at switchover.
 */
const BLOCK_BYTES = 4096;

export class DemoGuest {
  readonly model: Buffer;
  private writesDone = 0;
  private slowestMs = 0;
  private isStopped = true;
  private loops: Promise<void>[] = [];
  private seed = 0x9e3779b9;

  constructor(
    private readonly device: BlockDevice,
    private readonly depth: number,
  ) {
    this.model = Buffer.alloc(device.size);
  }

  start(): void {
    this.isStopped = false;
    const stripeBlocks = Math.floor(this.device.size / BLOCK_BYTES / this.depth);
    this.loops = Array.from({ length: this.depth }, (_, index) =>
      this.loop(index * stripeBlocks, stripeBlocks),
    );
  }

  /** Waits for the writes in flight; the model is then exactly what the disk must hold. */
  async stop(): Promise<void> {
    this.isStopped = true;
    await Promise.all(this.loops);
  }

  /** Gives the disk some data to copy: a quarter of it, in 1 MiB writes spread over the disk. */
  async fillSome(sizeBytes: number): Promise<void> {
    const chunkBytes = 1024 * 1024;
    for (let offset = 0; offset + chunkBytes <= sizeBytes; offset += 4 * chunkBytes) {
      const data = Buffer.alloc(chunkBytes, (offset / chunkBytes) % 251 || 1);
      await this.device.write(offset, data);
      data.copy(this.model, offset);
    }
  }

  /** Writes completed and the slowest one since the last call. */
  takeWindow(): { writes: number; slowestMs: number } {
    const window = { writes: this.writesDone, slowestMs: this.slowestMs };
    this.writesDone = 0;
    this.slowestMs = 0;
    return window;
  }

  private async loop(firstBlock: number, blockCount: number): Promise<void> {
    const data = Buffer.alloc(BLOCK_BYTES);
    while (!this.isStopped) {
      const offset = (firstBlock + Math.floor(this.random() * blockCount)) * BLOCK_BYTES;
      data.writeUInt32LE(this.random() * 0xffffffff, 0);
      data.writeUInt32LE(offset % 0xffffffff, 4);
      data.fill(data[0] ?? 0, 8);
      const startedMs = performance.now();
      await this.device.write(offset, data);
      const elapsedMs = performance.now() - startedMs;
      data.copy(this.model, offset);
      this.writesDone += 1;
      if (elapsedMs > this.slowestMs) this.slowestMs = elapsedMs;
    }
  }

  /** xorshift32: cheap and deterministic; the data only has to differ between writes. */
  private random(): number {
    let x = this.seed;
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    this.seed = x >>> 0;
    return this.seed / 4294967296;
  }
}
