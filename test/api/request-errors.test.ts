/**
 * Bad input gets a 4xx whose message names the field and says what is accepted (issue 10), not
 * ajv's "body must NOT have additional properties".
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createApi } from '../../src/api/app.js';
import { JobManager } from '../../src/control/job-manager.js';
import { Agent } from '../../src/host/agent.js';

const CASES: readonly {
  readonly what: string;
  readonly method: 'GET' | 'POST';
  readonly url: string;
  readonly payload?: string;
  readonly type?: string;
  readonly status: number;
  readonly message: RegExp;
}[] = [
  {
    what: 'a field of the wrong type',
    method: 'POST',
    url: '/v1/disks',
    payload: '{"name": 5, "size": "1M"}',
    status: 400,
    message: /^the body field "name" must be a string$/,
  },
  {
    what: 'a missing field',
    method: 'POST',
    url: '/v1/disks',
    payload: '{"size": "1M"}',
    status: 400,
    message:
      /^the body needs the field "name"; its fields are name, size, datastore, provisioning$/,
  },
  {
    what: 'a misspelt field',
    method: 'POST',
    url: '/v1/disks',
    payload: '{"name": "a", "size": "1M", "provisoning": "thin"}',
    status: 400,
    message: /unknown field "provisoning"; its fields are name, size, datastore, provisioning$/,
  },
  {
    what: 'a value outside an enum',
    method: 'POST',
    url: '/v1/disks',
    payload: '{"name": "a", "size": "1M", "provisioning": "fat"}',
    status: 400,
    message: /^the body field "provisioning" must be one of "thin", "thick"$/,
  },
  {
    what: 'a value matching none of its forms',
    method: 'POST',
    url: '/v1/disks',
    payload: '{"name": "a", "size": -3}',
    status: 400,
    message: /^the body field "size" must be bytes, or a size such as "10G"/,
  },
  {
    what: 'neither of two alternatives',
    method: 'POST',
    url: '/v1/migrations',
    payload: '{"disk": "a"}',
    status: 400,
    message: /^the body needs at least one of the fields "datastore", "host"$/,
  },
  {
    what: 'both of two exclusive fields',
    method: 'POST',
    url: '/v1/migrations',
    payload: '{"disk": "a", "vm": "b", "datastore": "x"}',
    status: 400,
    message: /^the body needs exactly one of the fields "disk", "vm"$/,
  },
  {
    what: 'malformed JSON',
    method: 'POST',
    url: '/v1/disks',
    payload: '{"name": ',
    status: 400,
    message: /^the body is not valid JSON; send one JSON object/,
  },
  {
    what: 'a body that is not JSON',
    method: 'POST',
    url: '/v1/disks',
    payload: 'name=a&size=1M',
    type: 'application/x-www-form-urlencoded',
    status: 415,
    message: /is not accepted; send the body as JSON with Content-Type: application\/json$/,
  },
  {
    what: 'an empty JSON body',
    method: 'POST',
    url: '/v1/disks',
    payload: '',
    status: 400,
    message: /^the body is empty but Content-Type says JSON/,
  },
  {
    what: 'an unknown route',
    method: 'GET',
    url: '/v1/nothing',
    status: 404,
    message: /^no route GET \/v1\/nothing; GET \/v1\/openapi.json lists the routes$/,
  },
];

test('request errors: each bad input is a 4xx saying what to send', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'ferry-request-errors-'));
  const agent = await Agent.open({ dataDir: dir });
  const app = createApi({ agent, jobs: new JobManager(agent), nbdUrl: 'nbd://127.0.0.1:10809' });
  try {
    for (const each of CASES) {
      const reply = await app.inject({
        method: each.method,
        url: each.url,
        ...(each.payload === undefined
          ? {}
          : {
              payload: each.payload,
              headers: { 'content-type': each.type ?? 'application/json' },
            }),
      });
      assert.equal(reply.statusCode, each.status, `${each.what}: ${reply.body}`);
      const error = (JSON.parse(reply.body) as { error: { code: string; message: string } }).error;
      assert.match(error.message, each.message, each.what);
      assert.equal(error.code, each.status === 404 ? 'ERR_NO_ROUTE' : 'ERR_BAD_REQUEST');
    }
    // Nothing was made by any of them.
    assert.deepEqual(await agent.listDisks(), []);
  } finally {
    await app.close();
    await agent.close();
    await rm(dir, { recursive: true, force: true });
  }
});
