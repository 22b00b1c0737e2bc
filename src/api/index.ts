export { type ApiOptions, createApi } from './app.js';
export type { DiskView } from './disk-view.js';
export type { ErrorBody } from './error-reply.js';
export { ApiErrorCode, type ErrorMapping, mappingOf } from './error-table.js';
