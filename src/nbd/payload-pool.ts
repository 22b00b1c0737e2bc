import { assert } from '../util/assert.js';

/**
 * Reusable buffers for the data of requests: write payloads that arrive split over several
 * socket chunks and must be joined, and the buffers reads are served from. Allocating a fresh
 * buffer per large request grows V8's external memory by the full payload each time, and past a
 * threshold that forces a full garbage collection: measured with fio at 1 MiB writes, ~45
 * mark-compacts a second halved throughput once Fastify's heap sat beside the server. Buffers
 * are kept per power-of-two size class from 4 KiB (a guest's typical read) to 32 MiB, and the
 * free lists hold at most `keepBytesMax` in all; beyond that, released buffers are dropped.
 *
 * Contract: `release` takes exactly a buffer `acquire` returned, once, after its last use (the
 * block layer promises not to keep a write's data after the write settles; a read's buffer is
 * released once the socket has taken the reply).
 */
const CLASS_MIN_BYTES = 4096;

export class PayloadPool {
  private readonly free = new Map<number, Buffer[]>();
  private freeBytes = 0;

  constructor(private readonly keepBytesMax: number) {}

  /** A buffer of exactly `length` bytes (a view of a pooled slab); contents are unspecified. */
  acquire(length: number): Buffer {
    const classBytes = sizeClassOf(length);
    const slab = this.free.get(classBytes)?.pop();
    if (slab !== undefined) {
      this.freeBytes -= classBytes;
      return slab.subarray(0, length);
    }
    return Buffer.allocUnsafeSlow(classBytes).subarray(0, length);
  }

  release(view: Buffer): void {
    const classBytes = view.buffer.byteLength;
    assert(view.byteOffset === 0 && classBytes === sizeClassOf(classBytes), 'not a pooled buffer');
    if (this.freeBytes + classBytes > this.keepBytesMax) return;
    const list = this.free.get(classBytes) ?? [];
    list.push(Buffer.from(view.buffer, 0, classBytes));
    this.free.set(classBytes, list);
    this.freeBytes += classBytes;
  }
}

function sizeClassOf(length: number): number {
  let size = CLASS_MIN_BYTES;
  while (size < length) size *= 2;
  return size;
}
