import { randomFillSync } from 'node:crypto';
import { open, stat } from 'node:fs/promises';

/**
 * A thin image with a share of it allocated at regular strides, and its model: extent `i` holds
 * `extentBytes` at offset `i * strideBytes + phaseBytes`, filled with one random pattern stamped
 * every 4 KiB with its own offset (no two blocks alike, nothing compresses or reads as zeros).
 * Only the extents are written (the rest is left a hole by ftruncate), so a 1 TiB image at 1%
 * costs 10 GiB of writes and of space; the model regenerates every byte for the check.
 */
export interface StridedImage {
  readonly sizeBytes: number;
  readonly extentBytes: number;
  readonly strideBytes: number;
  /** Where the first extent starts: room before it for a guest's own region. */
  readonly phaseBytes: number;
  readonly extentCount: number;
  /** The random pattern every extent is made from. */
  readonly pattern: Buffer;
}

const STAMP_BYTES = 4096;

/** The layout of `fraction` of `sizeBytes` in `extentBytes` extents, evenly spread. */
export function stridedLayout(
  sizeBytes: number,
  fraction: number,
  extentBytes: number,
  phaseBytes = 0,
): StridedImage {
  if (!(fraction > 0 && fraction <= 1)) throw new Error('fraction must be in (0, 1]');
  const strideBytes = Math.max(extentBytes, Math.round(extentBytes / fraction / 4096) * 4096);
  const extentCount = Math.max(
    1,
    Math.floor((sizeBytes - phaseBytes - extentBytes) / strideBytes) + 1,
  );
  const pattern = Buffer.allocUnsafe(extentBytes);
  randomFillSync(pattern);
  return { sizeBytes, extentBytes, strideBytes, phaseBytes, extentCount, pattern };
}

export function allocatedBytesOf(image: StridedImage): number {
  return image.extentCount * image.extentBytes;
}

function extentOffset(image: StridedImage, index: number): number {
  return image.phaseBytes + index * image.strideBytes;
}

/** Extent `index`'s bytes, into `into`. */
function fillExtent(image: StridedImage, index: number, into: Buffer): void {
  image.pattern.copy(into);
  const base = extentOffset(image, index);
  for (let at = 0; at + 8 <= into.length; at += STAMP_BYTES) {
    into.writeDoubleLE(base + at, at);
  }
}

/** Creates the image at `path` (it must not exist) and writes its extents; ends durable. */
export async function writeStridedImage(
  path: string,
  image: StridedImage,
  stop: AbortSignal,
): Promise<void> {
  const buffer = Buffer.allocUnsafe(image.extentBytes);
  const handle = await open(path, 'wx');
  try {
    await handle.truncate(image.sizeBytes);
    for (let index = 0; index < image.extentCount; index += 1) {
      stop.throwIfAborted();
      fillExtent(image, index, buffer);
      await handle.write(buffer, 0, buffer.length, extentOffset(image, index));
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Checks that `path` holds the model: every extent byte for byte, and no more space allocated
 * than the extents (plus `slackBytes`, for a guest's writes or a file system's metadata), so
 * the holes between them hold nothing either. Throws naming the first difference.
 */
export async function checkStridedImage(
  path: string,
  image: StridedImage,
  slackBytes: number,
): Promise<void> {
  const info = await stat(path);
  if (info.size !== image.sizeBytes) {
    throw new Error(`${path}: ${info.size} bytes, expected ${image.sizeBytes}`);
  }
  const allocated = info.blocks * 512;
  if (allocated > allocatedBytesOf(image) + slackBytes) {
    throw new Error(
      `${path}: ${allocated} bytes allocated, the model has ${allocatedBytesOf(image)}: ` +
        'holes were filled',
    );
  }
  const expected = Buffer.allocUnsafe(image.extentBytes);
  const actual = Buffer.allocUnsafe(image.extentBytes);
  const handle = await open(path, 'r');
  try {
    for (let index = 0; index < image.extentCount; index += 1) {
      fillExtent(image, index, expected);
      const offset = extentOffset(image, index);
      const { bytesRead } = await handle.read(actual, 0, actual.length, offset);
      if (bytesRead !== actual.length || !actual.equals(expected)) {
        throw new Error(`${path}: extent ${index} at ${offset} differs from the model`);
      }
    }
  } finally {
    await handle.close();
  }
}
