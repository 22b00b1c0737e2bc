/**
 * The crash tests (crash-cases.ts) again with their data on a loop-mounted btrfs: every crash point
 * once, each with another method in turn (all 20 pairs run on the machine's own file system).
 */
import { after } from 'node:test';
import { METHOD_NAMES } from '../../src/migrate/method.js';
import { mountLoopFs } from './loop-mount.js';

const mount = await mountLoopFs('btrfs', 4 * 1024 * 1024 * 1024);
process.env.TMPDIR = mount.path;
after(() => mount.unmount());

const { CRASH_CASES, defineCrashTests } = await import('../cli/crash-cases.js');
const points = [...new Set(CRASH_CASES.map(({ point }) => point))];
// The resume is checked, not where it starts: a reflink copies this small disk in one call,
// before the first checkpoint could persist it, so the crash half-way finds nothing recorded.
defineCrashTests(
  points.map((point, index) => ({
    point,
    method: METHOD_NAMES[index % METHOD_NAMES.length] ?? 'mirror',
  })),
  { isBitmapChecked: false },
);
