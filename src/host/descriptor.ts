import type { Provisioning } from '../block/raw-file.js';
import { readJson, writeJsonAtomic } from './atomic-file.js';
import { HostError, HostErrorCode } from './errors.js';
import { isValidName } from './names.js';

/**
 * The disk descriptor: the small JSON file that makes an image a disk. It is the durable
 * record of the disk's identity and authority — `generation` grows by one at every committed
 * switchover (DESIGN.md, "Authority and crash safety") — so it is only ever replaced whole,
 * through writeFileAtomic.
 *
 * Reading is strict: every field is checked and a bad file is reported as `ERR_BAD_DESCRIPTOR`
 * naming the file, so the agent can skip that one disk with a warning instead of refusing to
 * start or serving a disk it has misread.
 */
export const DESCRIPTOR_VERSION = 1;

export interface DiskDescriptor {
  readonly version: typeof DESCRIPTOR_VERSION;
  /** The disk name, also its NBD export name; equals the descriptor's file name stem. */
  readonly name: string;
  readonly sizeBytes: number;
  readonly format: 'raw';
  readonly provisioning: Provisioning;
  /** 1 at creation; +1 at each committed move of the disk's authority. */
  readonly generation: number;
  /** The image's file name, in the same datastore directory as the descriptor. */
  readonly image: string;
  /** ISO 8601 time of creation or import. */
  readonly createdAt: string;
  /**
   * The host that serves this disk, when the datastore is shared by several hosts (an NFS
   * mount): set by a cross-host move's commit, so the other hosts that see the same directory
   * leave the disk alone. Absent: whichever host has the datastore serves it.
   */
  readonly host?: string;
}

/** A plain file name: no separators, no leading '.', within common file system limits. */
const IMAGE_NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,254}$/;

/**
 * Validates a parsed descriptor. `source` names the file in error messages; `expectedName`, when
 * given, is the name the file name promises.
 */
export function parseDescriptor(
  value: unknown,
  source: string,
  expectedName?: string,
): DiskDescriptor {
  const fail = (what: string): never => {
    throw new HostError(HostErrorCode.BadDescriptor, `disk descriptor ${source}: ${what}`);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    fail('not a JSON object');
  const record = value as Record<string, unknown>;
  const { version, name, sizeBytes, format, provisioning, generation, image, createdAt, host } =
    record;
  if (version !== DESCRIPTOR_VERSION) {
    fail(
      `version ${JSON.stringify(version)} is not ${DESCRIPTOR_VERSION} (written by another Ferry version?)`,
    );
  }
  if (typeof name !== 'string' || !isValidName(name)) fail(`bad name ${JSON.stringify(name)}`);
  if (expectedName !== undefined && name !== expectedName) {
    fail(`names disk ${JSON.stringify(name)} but its file is for ${JSON.stringify(expectedName)}`);
  }
  if (!isPositiveInteger(sizeBytes)) fail(`bad sizeBytes ${JSON.stringify(sizeBytes)}`);
  if (format !== 'raw') fail(`unsupported format ${JSON.stringify(format)}`);
  if (provisioning !== 'thin' && provisioning !== 'thick') {
    fail(`bad provisioning ${JSON.stringify(provisioning)}`);
  }
  if (!isPositiveInteger(generation)) fail(`bad generation ${JSON.stringify(generation)}`);
  if (typeof image !== 'string' || !IMAGE_NAME_PATTERN.test(image)) {
    fail(`bad image file name ${JSON.stringify(image)}`);
  }
  if (typeof createdAt !== 'string' || Number.isNaN(Date.parse(createdAt))) {
    fail(`bad createdAt ${JSON.stringify(createdAt)}`);
  }
  if (host !== undefined && (typeof host !== 'string' || !isValidName(host))) {
    fail(`bad host ${JSON.stringify(host)}`);
  }
  return {
    ...(host === undefined ? {} : { host: host as string }),
    version: DESCRIPTOR_VERSION,
    name: name as string,
    sizeBytes: sizeBytes as number,
    format: 'raw',
    provisioning: provisioning as Provisioning,
    generation: generation as number,
    image: image as string,
    createdAt: createdAt as string,
  };
}

/** Reads and validates the descriptor at `path`; throws `ERR_BAD_DESCRIPTOR` or an fs error. */
export async function readDescriptor(path: string, expectedName?: string): Promise<DiskDescriptor> {
  return parseDescriptor(await readJson(path), path, expectedName);
}

/** Replaces the descriptor at `path` atomically and durably. */
export async function writeDescriptor(path: string, descriptor: DiskDescriptor): Promise<void> {
  parseDescriptor(descriptor, path);
  await writeJsonAtomic(path, descriptor);
}

function isPositiveInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value > 0;
}
