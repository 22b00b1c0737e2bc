import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { formatSize } from '../src/util/size.js';
import { mountLoopFs } from '../test/filesystems/loop-mount.js';
import { runCommand } from './children.js';
import { writeImage } from './image-file.js';
import { type BenchContext, settle, startFerryWithTwoStores } from './migrate-context.js';
import { checkSucceeded } from './migrate-ferry.js';
import { log, step } from './migrate-step.js';
import { fixed, markdownTable, median, ratioAgainst } from './migrate-table.js';

/**
 * Section 4, copy offload by reflink (issue 9 item 1): a thick disk full of random data moved
 * idle by `mirror` between two datastores on one loop-mounted XFS (reflink=1), where the copier
 * clones extents (FICLONERANGE) instead of copying bytes, against `cp --reflink=always` + sync of
 * the same image on the same file system: the floor for a metadata-only copy. Time is wall time
 * from asking to the job's end, the destination's creation and the source's removal included.
 * Needs root (mount) and xfsprogs.
 */
export async function runReflinkSection(context: BenchContext, sizeBytes: number): Promise<string> {
  // Room for the disk, cp's reference image and the thick destination's own allocation (made
  // before the clones replace it), and a margin.
  const mount = await mountLoopFs('xfs', 3 * sizeBytes + 2 * 1024 ** 3);
  const ferryMs: number[] = [];
  const cpMs: number[] = [];
  try {
    const dir = join(mount.path, 'bench');
    await mkdir(dir, { recursive: true });
    const staged = join(dir, 'disk.raw');
    await step('writing the image on XFS', context.stepTimeoutMs, () =>
      writeImage(staged, sizeBytes, context.stop),
    );
    const reference = join(dir, 'reference.raw');
    await runCommand('cp', 'cp', ['--reflink=never', '--sparse=never', staged, reference], {
      timeoutMs: context.stepTimeoutMs,
    });
    const ferry = await startFerryWithTwoStores(context, dir, context.ferryDriver);
    try {
      await ferry.importDisk('disk', staged, 'a');
      let where = 'a';
      for (let run = 1; run <= context.runs; run += 1) {
        context.stop.throwIfAborted();
        await settle(context);
        const to = where === 'a' ? 'b' : 'a';
        const outcome = await step('reflink move', context.stepTimeoutMs, () =>
          ferry.move({ disk: 'disk', datastore: to, method: 'mirror' }),
        );
        checkSucceeded(outcome, 'reflink move');
        where = to;
        ferryMs.push(outcome.endedAtMs - outcome.askedAtMs);
        await settle(context);
        const copy = join(dir, 'reflinked.raw');
        const startedMs = performance.now();
        await runCommand('cp', 'cp', ['--reflink=always', reference, copy], {
          timeoutMs: context.stepTimeoutMs,
        });
        await runCommand('sync', 'sync', [copy], { timeoutMs: context.stepTimeoutMs });
        cpMs.push(performance.now() - startedMs);
        await rm(copy);
        log(
          `reflink run ${run}/${context.runs}: Ferry ${fixed(ferryMs.at(-1) ?? 0, 0)} ms, ` +
            `cp --reflink ${fixed(cpMs.at(-1) ?? 0, 0)} ms`,
        );
      }
    } finally {
      await ferry.stop();
    }
  } finally {
    await mount.unmount();
  }
  const ferryMedian = median(ferryMs);
  const table = markdownTable(
    ['copy', 'time ms (median)', 'runs ms'],
    [
      [
        'Ferry mirror (reflink)',
        fixed(ferryMedian, 0),
        ferryMs.map((ms) => fixed(ms, 0)).join(', '),
      ],
      [
        'cp --reflink=always + sync',
        fixed(median(cpMs), 0),
        cpMs.map((ms) => fixed(ms, 0)).join(', '),
      ],
    ],
  );
  return [
    `## 4. Idle move on a reflink file system, ${formatSize(sizeBytes)} thick disk, XFS (loop)`,
    '',
    `Medians of ${context.runs} run(s); Ferry driven through: ${context.ferryDriver}.`,
    '',
    table,
    '',
    `- Ferry reflink move, seconds: ${ratioAgainst(ferryMedian / 1000, { atMost: 0.5 })}`,
    `- Ferry / cp --reflink: ${fixed(ferryMedian / median(cpMs), 2)}`,
    '',
  ].join('\n');
}
