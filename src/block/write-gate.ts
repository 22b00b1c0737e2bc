import type { BlockDevice, WriteOptions, ZeroOptions } from './device.js';
import { PassThrough } from './filter.js';

/**
 * Holds every change (write, zeroes, trim) until `open()`, letting reads, extents, cache and
 * flush through. Used for a disk arriving with a VM from another host (host/vm-receiver.ts): the
 * destination QEMU opens it — and may read it — while it waits for the VM's memory, but nothing
 * may change it before the move commits, when the source stops being the disk's authority. A
 * held change starts, in arrival order, when the gate opens. The number of held changes is
 * bounded by the client's own queue depth (an NBD session's in-flight limit).
 */
export class WriteGate extends PassThrough {
  private held: (() => void)[] | null = [];

  constructor(next: BlockDevice) {
    super(next);
  }

  get isOpen(): boolean {
    return this.held === null;
  }

  /** Lets every held change start, and every later one through at once. */
  open(): void {
    const held = this.held;
    this.held = null;
    for (const release of held ?? []) release();
  }

  override write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.whenOpen(() => super.write(offset, data, options));
  }

  override writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.whenOpen(() => super.writeZeroes(offset, length, options));
  }

  override trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.whenOpen(() => super.trim(offset, length, options));
  }

  /** Never closes the device below: it belongs to the disk's own stack. */
  override async close(): Promise<void> {
    this.open();
  }

  private whenOpen(change: () => Promise<void>): Promise<void> {
    const held = this.held;
    if (held === null) return change();
    return new Promise<void>((resolve) => held.push(resolve)).then(change);
  }
}
