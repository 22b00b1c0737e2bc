import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { errorCodeOf, errorMessageOf } from '../util/errors.js';
import { ApiErrorCode, mappingOf } from './error-table.js';
import { requestErrorMessage } from './request-error-message.js';

/**
 * Every failed request gets `{ error: { code, message } }` with the status error-table.ts gives
 * the code, so clients branch on `code` and show `message`. Fastify's own request errors (schema
 * validation, unparsable JSON, body too large) keep their 4xx status under `ERR_BAD_REQUEST`,
 * with a message naming the field and what it accepts (request-error-message.ts).
 */
export interface ErrorBody {
  readonly error: { readonly code: string; readonly message: string };
}

export function replyError(
  error: unknown,
  request: FastifyRequest,
  reply: FastifyReply,
): FastifyReply {
  const fastifyStatus = (error as Partial<FastifyError>).statusCode;
  const isRequestError =
    (error as Partial<FastifyError>).validation !== undefined ||
    (errorCodeOf(error)?.startsWith('FST_') === true &&
      fastifyStatus !== undefined &&
      fastifyStatus < 500);
  const code = isRequestError
    ? ApiErrorCode.BadRequest
    : (errorCodeOf(error) ?? ApiErrorCode.Internal);
  const status =
    isRequestError && fastifyStatus !== undefined ? fastifyStatus : mappingOf(code).httpStatus;
  if (status >= 500) request.log.error({ err: error }, 'request failed');
  const message =
    (isRequestError ? requestErrorMessage(error as Partial<FastifyError>, request) : undefined) ??
    errorMessageOf(error);
  const body: ErrorBody = { error: { code, message } };
  return reply.status(status).send(body);
}
