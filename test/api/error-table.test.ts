import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mappingOf } from '../../src/api/error-table.js';

test('error table: input errors are 400 and usage, lookups 404, conflicts 409, rest 500', () => {
  const expected: [string, number, number][] = [
    ['ERR_BAD_NAME', 400, 2],
    ['ERR_BAD_SIZE', 400, 2],
    ['ERR_BAD_PATH', 400, 2],
    ['ERR_BAD_REQUEST', 400, 2],
    ['ERR_DATASTORE_AMBIGUOUS', 400, 2],
    ['ERR_CROSS_DEVICE', 400, 1],
    ['ERR_NOT_FOUND', 404, 1],
    ['ERR_EXISTS', 409, 1],
    ['ERR_DATASTORE_NOT_EMPTY', 409, 1],
    ['ERR_DATASTORE_UNAVAILABLE', 503, 1],
    ['ENOSPC', 507, 1],
    ['ERR_BAD_URL', 400, 2],
    ['ERR_BAD_KEY', 400, 2],
    ['ERR_PSK_FILE', 400, 2],
    ['ERR_TLS_CONFIG', 400, 2],
    ['ERR_COMMIT_UNKNOWN', 503, 1],
    ['ERR_REMOTE_DISK', 409, 1],
    ['ERR_UNAUTHORIZED', 401, 1],
    ['ERR_PEER_UNAUTHORIZED', 409, 1],
    ['ERR_PEER_REFUSED', 502, 1],
    ['ERR_PEER_UNREACHABLE', 503, 1],
    ['ERR_BAD_VM_CONFIG', 400, 2],
    ['ERR_VM_RUNNING', 409, 1],
    ['ERR_VM_STOPPED', 409, 1],
    ['ERR_QEMU', 502, 1],
    ['ERR_MEMORY_MIGRATION', 502, 1],
    ['ERR_BAD_DESCRIPTOR', 500, 1],
    ['EIO', 500, 1],
    ['', 500, 1],
  ];
  for (const [code, httpStatus, exitCode] of expected) {
    assert.deepEqual(mappingOf(code), { httpStatus, exitCode }, code);
  }
});
