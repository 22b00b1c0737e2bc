import { NAME_HELP } from '../host/names.js';
import { METHOD_NAMES, type MethodName, MIRROR_MODES, type MirrorMode } from '../migrate/method.js';

/**
 * JSON schemas of request bodies and parameters, compiled once by Fastify at start. Unknown
 * properties are refused, not dropped (app.ts turns off ajv's removeAdditional), so a misspelt
 * `provisoning` is an error rather than a silent default. Names are checked by host/names.ts,
 * which gives the better message; the schemas only bound their length.
 */
const nameSchema = { type: 'string', minLength: 1, maxLength: 64, description: NAME_HELP } as const;

export const nameParamsSchema = {
  type: 'object',
  required: ['name'],
  properties: { name: { type: 'string', maxLength: 64 } },
} as const;
export interface NameParams {
  name: string;
}

export const createDiskBodySchema = {
  type: 'object',
  required: ['name', 'size'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    size: {
      description: 'bytes, or a size such as "10G" (powers of 1024)',
      anyOf: [
        { type: 'string', minLength: 1, maxLength: 32 },
        { type: 'integer', minimum: 1 },
      ],
    },
    datastore: nameSchema,
    provisioning: { type: 'string', enum: ['thin', 'thick'] },
  },
} as const;
export interface CreateDiskBody {
  name: string;
  size: string | number;
  datastore?: string;
  provisioning?: 'thin' | 'thick';
}

export const importDiskBodySchema = {
  type: 'object',
  required: ['name', 'file'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    file: {
      type: 'string',
      minLength: 1,
      maxLength: 4096,
      description: 'absolute path on the agent host',
    },
    datastore: nameSchema,
  },
} as const;
export interface ImportDiskBody {
  name: string;
  file: string;
  datastore?: string;
}

export const addDatastoreBodySchema = {
  type: 'object',
  required: ['name', 'path'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    path: {
      type: 'string',
      minLength: 1,
      maxLength: 4096,
      description: 'absolute path on the agent host',
    },
  },
} as const;
export interface AddDatastoreBody {
  name: string;
  path: string;
}

/** A copy rate: bytes per second, or a size per second such as "200M" or "200M/s"; 0 unlimited. */
const speedSchema = {
  description: 'bytes per second, or a size such as "200M" (per second); 0 for unlimited',
  anyOf: [
    { type: 'string', minLength: 1, maxLength: 32 },
    { type: 'integer', minimum: 0 },
  ],
} as const;

const nameMapSchema = {
  type: 'object',
  maxProperties: 64,
  propertyNames: { maxLength: 64 },
  additionalProperties: nameSchema,
} as const;

export const startMigrationBodySchema = {
  type: 'object',
  // A disk, or a VM (its home directory and every disk, switched together); never both. The
  // destination: a datastore here, or a host (and optionally a datastore there).
  allOf: [
    { oneOf: [{ required: ['disk'] }, { required: ['vm'] }] },
    { anyOf: [{ required: ['datastore'] }, { required: ['host'] }] },
  ],
  additionalProperties: false,
  properties: {
    disk: nameSchema,
    vm: nameSchema,
    datastore: { ...nameSchema, description: 'the destination datastore (on `host` if given)' },
    host: { ...nameSchema, description: 'another host to move the disk to (ferry host add)' },
    mirror: {
      type: 'string',
      enum: [...MIRROR_MODES],
      description: 'sync, async, or auto (async that turns sync when the link falls behind)',
    },
    mirrorBuffer: {
      description: 'the async mirror buffer: bytes, or a size such as "64M"',
      anyOf: [
        { type: 'string', minLength: 1, maxLength: 32 },
        { type: 'integer', minimum: 1 },
      ],
    },
    method: { type: 'string', enum: [...METHOD_NAMES] },
    speed: speedSchema,
    guestFirst: {
      type: 'boolean',
      description:
        "the copy backs off while the guest's latency rises over its usual (default true); false keeps every copy chunk in flight",
    },
    provisioning: { type: 'string', enum: ['thin', 'thick'] },
    networkMap: {
      ...nameMapSchema,
      description: "a VM moved to another host: each of its networks here → that host's",
    },
    datastoreMap: {
      ...nameMapSchema,
      description: "a VM moved to another host: each datastore of its disks here → that host's",
    },
    maxDowntimeMs: {
      type: 'integer',
      minimum: 1,
      maximum: 600_000,
      description: "a running VM moved to another host: QEMU's downtime limit, ms (default 300)",
    },
  },
} as const;
export interface StartMigrationBody {
  disk?: string;
  vm?: string;
  datastore?: string;
  host?: string;
  mirror?: MirrorMode;
  mirrorBuffer?: string | number;
  method?: MethodName;
  speed?: string | number;
  guestFirst?: boolean;
  provisioning?: 'thin' | 'thick';
  networkMap?: Record<string, string>;
  datastoreMap?: Record<string, string>;
  maxDowntimeMs?: number;
}

const sizeOrBytesSchema = {
  anyOf: [
    { type: 'string', minLength: 1, maxLength: 32 },
    { type: 'integer', minimum: 1 },
  ],
} as const;

export const createVmBodySchema = {
  type: 'object',
  required: ['name', 'disks'],
  additionalProperties: false,
  properties: {
    name: nameSchema,
    disks: {
      type: 'array',
      minItems: 1,
      maxItems: 64,
      description: 'NAME of an existing disk, or NAME:SIZE to create it when missing',
      items: { type: 'string', minLength: 1, maxLength: 100 },
    },
    datastore: { ...nameSchema, description: "where the home goes; default: the first disk's" },
    memory: { ...sizeOrBytesSchema, description: 'guest RAM, e.g. "512M"; default 512M' },
    cpus: { type: 'integer', minimum: 1, maximum: 64 },
    accel: { type: 'string', enum: ['auto', 'kvm', 'tcg'] },
    kernel: { type: 'string', minLength: 1, maxLength: 4096, description: 'absolute path' },
    initrd: { type: 'string', minLength: 1, maxLength: 4096, description: 'absolute path' },
    append: { type: 'string', maxLength: 4096 },
    nics: {
      type: 'array',
      maxItems: 8,
      items: {
        type: 'object',
        required: ['network'],
        additionalProperties: false,
        properties: { network: nameSchema, mac: { type: 'string', maxLength: 17 } },
      },
    },
  },
} as const;
export interface CreateVmBody {
  name: string;
  disks: string[];
  datastore?: string;
  memory?: string | number;
  cpus?: number;
  accel?: 'auto' | 'kvm' | 'tcg';
  kernel?: string;
  initrd?: string;
  append?: string;
  nics?: { network: string; mac?: string }[];
}

export const stopVmBodySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    force: { type: 'boolean', description: 'quit QEMU at once instead of an ACPI power-down' },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 3600 },
  },
} as const;
export interface StopVmBody {
  force?: boolean;
  timeoutSeconds?: number;
}

export const addNetworkBodySchema = {
  type: 'object',
  required: ['name', 'bridge'],
  additionalProperties: false,
  properties: { name: nameSchema, bridge: { type: 'string', minLength: 1, maxLength: 15 } },
} as const;
export interface AddNetworkBody {
  name: string;
  bridge: string;
}

export const jobParamsSchema = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', minLength: 1, maxLength: 128 } },
} as const;
export interface JobParams {
  id: string;
}

export const jobSpeedBodySchema = {
  type: 'object',
  required: ['speed'],
  additionalProperties: false,
  properties: { speed: speedSchema },
} as const;
export interface JobSpeedBody {
  speed: string | number;
}

export const addHostBodySchema = {
  type: 'object',
  required: ['name', 'url', 'key'],
  additionalProperties: false,
  properties: {
    name: { ...nameSchema, description: 'what this host calls the peer' },
    url: {
      type: 'string',
      minLength: 1,
      maxLength: 2048,
      description: "the peer agent's API, http://HOST:PORT",
    },
    key: {
      type: 'string',
      minLength: 3,
      maxLength: 2048,
      description: 'the pre-shared key as one psktool line, IDENTITY:HEXKEY',
    },
  },
} as const;
export interface AddHostBody {
  name: string;
  url: string;
  key: string;
}

export const createTokenBodySchema = {
  type: 'object',
  required: ['name'],
  additionalProperties: false,
  properties: { name: nameSchema },
} as const;
export interface CreateTokenBody {
  name: string;
}
