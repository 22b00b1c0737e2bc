import { NAME_HELP } from '../host/names.js';

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
