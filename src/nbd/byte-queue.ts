import { assert } from '../util/assert.js';

/**
 * The bytes a socket has delivered and the parser has not yet consumed, kept as the list of
 * chunks they arrived in. `take` slices without copying when one chunk holds the bytes and
 * copies only when they span chunks (STYLE.md, "Parsing is an explicit state machine over a list
 * of chunks").
 */
export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Bytes of `chunks[0]` already consumed. */
  private headOffset = 0;
  private lengthBytes = 0;

  get length(): number {
    return this.lengthBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.lengthBytes += chunk.length;
  }

  /** Removes and returns the next `count` bytes; the caller checked `length >= count`. */
  take(count: number): Buffer {
    assert(count <= this.lengthBytes, 'ByteQueue.take past the end');
    const first = this.chunks[0];
    if (count === 0 || first === undefined) return Buffer.alloc(0);
    const firstLeft = first.length - this.headOffset;
    if (count <= firstLeft) {
      const out = first.subarray(this.headOffset, this.headOffset + count);
      this.consume(count);
      return out;
    }
    const out = Buffer.allocUnsafe(count);
    let copied = 0;
    while (copied < count) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined, 'ByteQueue ran out of chunks');
      const n = Math.min(count - copied, chunk.length - this.headOffset);
      chunk.copy(out, copied, this.headOffset, this.headOffset + n);
      copied += n;
      this.consume(n);
    }
    return out;
  }

  /** True when the next `count` bytes lie in one chunk, so `take(count)` would not copy. */
  isContiguous(count: number): boolean {
    const first = this.chunks[0];
    return first !== undefined && first.length - this.headOffset >= count;
  }

  /** Removes the next `target.length` bytes into `target`. */
  takeInto(target: Buffer): void {
    assert(target.length <= this.lengthBytes, 'ByteQueue.takeInto past the end');
    let copied = 0;
    while (copied < target.length) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined, 'ByteQueue ran out of chunks');
      const n = Math.min(target.length - copied, chunk.length - this.headOffset);
      chunk.copy(target, copied, this.headOffset, this.headOffset + n);
      copied += n;
      this.consume(n);
    }
  }

  /** The next `count` bytes without consuming them (a view when one chunk holds them). */
  peek(count: number): Buffer {
    assert(count <= this.lengthBytes, 'ByteQueue.peek past the end');
    const first = this.chunks[0];
    if (first !== undefined && first.length - this.headOffset >= count) {
      return first.subarray(this.headOffset, this.headOffset + count);
    }
    const out = Buffer.allocUnsafe(count);
    let copied = 0;
    for (let i = 0; copied < count; i += 1) {
      const chunk = this.chunks[i];
      assert(chunk !== undefined, 'ByteQueue ran out of chunks');
      const start = i === 0 ? this.headOffset : 0;
      copied += chunk.copy(out, copied, start, Math.min(chunk.length, start + count - copied));
    }
    return out;
  }

  /** Drops the next `count` bytes (or all there are, if fewer); returns how many were dropped. */
  skip(count: number): number {
    let left = Math.min(count, this.lengthBytes);
    const dropped = left;
    while (left > 0) {
      const chunk = this.chunks[0];
      assert(chunk !== undefined, 'ByteQueue ran out of chunks');
      const n = Math.min(left, chunk.length - this.headOffset);
      this.consume(n);
      left -= n;
    }
    return dropped;
  }

  private consume(count: number): void {
    this.headOffset += count;
    this.lengthBytes -= count;
    const first = this.chunks[0];
    if (first !== undefined && this.headOffset === first.length) {
      this.chunks.shift();
      this.headOffset = 0;
    }
  }
}
