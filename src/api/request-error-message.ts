import type { FastifyError, FastifyRequest } from 'fastify';

/**
 * Messages for requests Fastify refuses before a handler runs (issue 10: "every bad input
 * answered with a 4xx and a message that says what to do"). ajv's own words ("body must NOT have
 * additional properties", "must match a schema in anyOf") name neither the field nor what would
 * be accepted; these name both, reading the route's schema for the allowed fields, values and
 * alternatives. Pure: an error and the route's schema in, one sentence out.
 */
interface AjvError {
  readonly keyword: string;
  readonly instancePath: string;
  readonly schemaPath: string;
  readonly params: Record<string, unknown>;
  readonly message?: string;
}

interface Schema {
  readonly type?: string;
  readonly description?: string;
  readonly properties?: Readonly<Record<string, Schema>>;
  readonly required?: readonly string[];
  readonly anyOf?: readonly Schema[];
  readonly oneOf?: readonly Schema[];
}

const PART_NAMES: Readonly<Record<string, string>> = {
  body: 'the body',
  params: 'the path',
  querystring: 'the query string',
  headers: 'the headers',
};

/** A sentence for a Fastify request error, or undefined to keep Fastify's own message. */
export function requestErrorMessage(
  error: Partial<FastifyError>,
  request: FastifyRequest,
): string | undefined {
  if (error.validation !== undefined) {
    const part = error.validationContext ?? 'body';
    const schema = (request.routeOptions.schema as Record<string, Schema> | undefined)?.[part];
    return validationMessage(error.validation as readonly AjvError[], part, schema);
  }
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return 'the body is not valid JSON; send one JSON object, e.g. {"name": "vm1"}';
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return 'the body is empty but Content-Type says JSON; send a JSON object, or no Content-Type';
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return `${request.headers['content-type'] ?? 'this content type'} is not accepted; send the body as JSON with Content-Type: application/json`;
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return 'the body is too large: bodies are a few names and sizes, at most 64 KiB';
    default:
      return undefined;
  }
}

function validationMessage(
  errors: readonly AjvError[],
  part: string,
  schema: Schema | undefined,
): string {
  // anyOf/oneOf report each branch's failure, then their own: say what the alternatives are
  // instead, once, and drop the branches' errors below that path.
  const composite = errors.find((e) => e.keyword === 'anyOf' || e.keyword === 'oneOf');
  const chosen = composite ?? errors[0];
  if (chosen === undefined) return `${PART_NAMES[part] ?? part} is not valid`;
  const where = fieldName(part, chosen.instancePath);
  const at = schemaAt(schema, chosen.instancePath);
  return `${where} ${describe(chosen, at, keywordParent(schema, chosen.schemaPath), part)}`;
}

function describe(
  error: AjvError,
  at: Schema | undefined,
  parent: Schema | undefined,
  part: string,
): string {
  const params = error.params;
  switch (error.keyword) {
    case 'required':
      return `needs the field "${String(params.missingProperty)}"${allowedFields(at)}`;
    case 'additionalProperties':
      return `has an unknown field "${String(params.additionalProperty)}"${allowedFields(at)}`;
    case 'type':
      if (error.instancePath === '' && part === 'body') {
        return 'must be a JSON object, sent with Content-Type: application/json';
      }
      return `must be ${article(String(params.type))}`;
    case 'enum':
      return `must be one of ${(params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
    case 'anyOf':
    case 'oneOf':
      return alternatives(error.keyword, parent, at);
    default:
      // minLength, maximum, pattern, ...: ajv's words are clear once the field is named.
      return `${error.message ?? 'is not valid'}${at?.description ? ` (${at.description})` : ''}`;
  }
}

/** "exactly one of the fields "disk", "vm"", or the field's description ("bytes, or ..."). */
function alternatives(
  keyword: 'anyOf' | 'oneOf',
  parent: Schema | undefined,
  at: Schema | undefined,
): string {
  const branches = parent?.[keyword] ?? [];
  const names = branches.flatMap((branch) => branch.required ?? []);
  if (names.length === branches.length && names.length > 0) {
    const list = names.map((name) => `"${name}"`).join(', ');
    return keyword === 'oneOf'
      ? `needs exactly one of the fields ${list}`
      : `needs at least one of the fields ${list}`;
  }
  if (at?.description !== undefined) return `must be ${at.description}`;
  return `must be ${branches.map((branch) => article(branch.type ?? 'value')).join(' or ')}`;
}

function allowedFields(at: Schema | undefined): string {
  const names = Object.keys(at?.properties ?? {});
  return names.length === 0 ? '' : `; its fields are ${names.join(', ')}`;
}

/** `body` + `/name` → `the body field "name"`; `` → `the body`. */
function fieldName(part: string, instancePath: string): string {
  const whole = PART_NAMES[part] ?? part;
  if (instancePath === '') return whole;
  const path = instancePath.slice(1).split('/').join('.');
  return part === 'params' ? `the path parameter "${path}"` : `${whole} field "${path}"`;
}

/** The subschema at an instance path, through `properties` (and the composites' branches). */
function schemaAt(schema: Schema | undefined, instancePath: string): Schema | undefined {
  let current = schema;
  for (const key of instancePath.split('/').slice(1)) {
    current = current?.properties?.[key];
  }
  return current;
}

/** The schema object holding the keyword that failed: `#/allOf/1/anyOf` → `allOf[1]`. */
function keywordParent(schema: Schema | undefined, schemaPath: string): Schema | undefined {
  let current: unknown = schema;
  for (const key of schemaPath.split('/').slice(1, -1)) {
    if (typeof current !== 'object' || current === null) return undefined;
    current = (current as Record<string, unknown>)[decodeURIComponent(key)];
  }
  return current as Schema | undefined;
}

function article(type: string): string {
  switch (type) {
    case 'integer':
      return 'an integer';
    case 'object':
      return 'an object';
    case 'array':
      return 'an array';
    default:
      return `a ${type}`;
  }
}
