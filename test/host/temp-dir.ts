import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after } from 'node:test';

/**
 * A fresh directory under the system temp dir, removed by an `after` hook whatever the outcome,
 * so tests leave nothing behind. Call it inside a test body: from a `before` hook the removal
 * may run before the tests that use the directory. Shared by test/host, test/api, test/cli.
 */
export async function makeTempDir(prefix = 'ferry-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}
