/**
 * Every method's integrity tests again, with their data on a loop-mounted btrfs: the
 * same test files, their temporary directories (os.tmpdir(), which reads TMPDIR) inside the
 * mount. Moves there take the reflink path (copy-offload.ts). The default run covers the
 * machine's own file system (ext4 here and in CI).
 */
import { after } from 'node:test';
import { mountLoopFs } from './loop-mount.js';

const mount = await mountLoopFs('btrfs', 4 * 1024 * 1024 * 1024);
process.env.TMPDIR = mount.path;
after(() => mount.unmount());

await import('../host/disk-move.test.js');
await import('../cli/migrate-live.test.js');
