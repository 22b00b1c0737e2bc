import assert from 'node:assert/strict';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { joinConsoles } from '../cross-host/vm-guest.js';
import { hasTool, isCi } from '../nbd/interop-helpers.js';
import { guestImage } from './guest-image.js';
import {
  blockContent,
  GUEST_BLOCK_BYTES,
  type GuestLog,
  parseGuestLog,
  verifyDisk,
} from './guest-log.js';
import { startGuest } from './run-guest.js';

const BOOT = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';

/** A log of `acks` writes over `blocks` blocks, as the guest prints it. */
function fakeLog(acks: number, blocks: number, boot = BOOT): string {
  const lines = [
    `ferry-guest boot ${boot}`,
    `ferry-guest writer blocks ${blocks} interval_ms 0 check_every 16`,
  ];
  for (let n = 1; n <= acks; n++) lines.push(`tick ${n} ${n - 1}`, `ack ${n} ${n % blocks}`);
  return lines.map((line) => line + '\r\n').join('');
}

/** A disk holding what `writes` writes did (the guest's sequence), as a read function. */
function fakeDisk(
  writes: number,
  blocks: number,
): { disk: Buffer; read: (o: number, l: number) => Promise<Buffer> } {
  const disk = Buffer.alloc(blocks * GUEST_BLOCK_BYTES);
  for (let n = 1; n <= writes; n++) {
    blockContent(BOOT, n, n % blocks).copy(disk, (n % blocks) * GUEST_BLOCK_BYTES);
  }
  return { disk, read: async (offset, length) => disk.subarray(offset, offset + length) };
}

test('a block holds its header line, then its write number repeated, 4096 bytes in all', () => {
  const data = blockContent(BOOT, 12, 3);
  assert.equal(data.length, GUEST_BLOCK_BYTES);
  const header = `ferry-block 3 write 12 boot ${BOOT}\n`;
  assert.equal(data.toString('latin1', 0, header.length), header);
  assert.equal(data.toString('latin1', header.length, header.length + 9), '12.12.12.');
  assert.notDeepEqual(blockContent(BOOT, 13, 3), data);
});

test('parsing a log: boots, acks, ticks, checks, bad lines, and noise in between', () => {
  const text =
    fakeLog(5, 4) +
    '[    1.234] some kernel message\r\ncheck 3 ok\r\nbad 2 write 2 got "x"\r\nerror 6 2 I/O error\r\n';
  const log = parseGuestLog(text);
  assert.deepEqual(log.bootIds, [BOOT]);
  assert.deepEqual(log.writer, { blocks: 4, intervalMs: 0, checkEvery: 16 });
  assert.deepEqual(
    log.acked.map((a) => [a.n, a.block]),
    [
      [1, 1],
      [2, 2],
      [3, 3],
      [4, 0],
      [5, 1],
    ],
  );
  assert.equal(log.lastAcked, 5);
  assert.deepEqual(log.counters, [1, 2, 3, 4, 5]);
  assert.equal(log.checksOk, 1);
  assert.deepEqual(log.bad, ['bad 2 write 2 got "x"']);
  assert.deepEqual(log.errors, ['error 6 2 I/O error']);
  assert.deepEqual(log.problems, []);
});

test('joining the consoles of a move: the cut where a line was split, or where the two began alike', () => {
  const whole = fakeLog(110, 4);
  const snapshot = whole.indexOf('tick 100 ');
  // The console switched in the middle of "ack 105 1": the source has "ack 10", the destination
  // the snapshot, then "5 1" and the rest.
  const split = whole.indexOf('ack 105 ') + 'ack 10'.length;
  const joinedSplit = joinConsoles(
    whole.slice(0, split),
    whole.slice(0, snapshot) + whole.slice(split),
  );
  assert.deepEqual(parseGuestLog(joinedSplit).problems, []);
  assert.equal(parseGuestLog(joinedSplit).lastAcked, 110);
  // The switch fell between lines, and the destination's suffix begins as the source's
  // continuation did ("tick 10" of "tick 100" and "tick 105").
  const between = whole.indexOf('tick 105 ');
  const joinedAlike = joinConsoles(
    whole.slice(0, between),
    whole.slice(0, snapshot) + whole.slice(between),
  );
  assert.equal(joinedAlike, whole);
  // The source's whole log came with the home: the destination tells it all.
  assert.equal(joinConsoles(whole.slice(0, split), whole), whole);
});

test('parsing names a lost ack, an ack at the wrong block and a counter that went back', () => {
  const text = fakeLog(3, 8).replace('ack 2 2\r\n', '') + 'tick 2 3\r\nack 4 5\r\n';
  assert.deepEqual(parseGuestLog(text).problems, [
    'ack 3 after ack 1',
    'tick counter 2 after 3',
    'ack 4 at block 5, not 4',
  ]);
});

test('verifyDisk accepts a disk with every acknowledged write', async () => {
  const { read } = fakeDisk(10, 4);
  assert.deepEqual(await verifyDisk(read, parseGuestLog(fakeLog(10, 4))), []);
});

test('verifyDisk reports a corrupted block and a lost write', async () => {
  const { disk, read } = fakeDisk(10, 8);
  const flipAt = 3 * GUEST_BLOCK_BYTES + 100; // block 3 (write 3): one bit flipped
  disk[flipAt] = disk[flipAt]! ^ 1;
  blockContent(BOOT, 1, 1).copy(disk, 1 * GUEST_BLOCK_BYTES); // block 1: write 9 lost, 1 is there
  const mismatches = await verifyDisk(read, parseGuestLog(fakeLog(10, 8)));
  assert.deepEqual(
    mismatches.map((m) => [m.block, m.expectedWrite]),
    [
      [1, 9],
      [3, 3],
    ],
  );
  assert.match(mismatches[0]!.found, /ferry-block 1 write 1 boot/);
});

test('verifyDisk accepts the write in flight landed or not, but nothing else there', async () => {
  const log = parseGuestLog(fakeLog(10, 4)); // write 11 was in flight, to block 3 (held write 7)
  const landed = fakeDisk(11, 4);
  assert.deepEqual(await verifyDisk(landed.read, log), []);
  const notLanded = fakeDisk(10, 4);
  assert.deepEqual(await verifyDisk(notLanded.read, log), []);
  const torn = fakeDisk(11, 4);
  torn.disk.fill(0, 3 * GUEST_BLOCK_BYTES + 2048, 4 * GUEST_BLOCK_BYTES);
  assert.deepEqual(
    (await verifyDisk(torn.read, log)).map((m) => m.block),
    [3],
  );
});

test('verifyDisk refuses a log with two boots (the guest rebooted)', async () => {
  const log = parseGuestLog(fakeLog(2, 4) + fakeLog(2, 4, 'another-boot'));
  await assert.rejects(verifyDisk(fakeDisk(2, 4).read, log), /one boot; the log has 2/);
});

/** The rule of the interop tests (STYLE.md, "Tests"): skip if tools are missing, unless CI. */
const missing = ['qemu-system-x86_64', 'apt-get', 'dpkg-deb'].filter((tool) => !hasTool(tool));
const missingReason = missing.length > 0 ? `${missing.join(', ')} not installed` : undefined;

test('the guest under TCG: every acknowledged write is on the disk after QEMU is killed', {
  skip: !isCi && missingReason !== undefined ? missingReason : false,
  timeout: 120_000,
}, async (t) => {
  if (missingReason !== undefined) throw new Error(`${missingReason}; CI=true, so no skipping`);
  const image = await guestImage();
  const dir = await mkdtemp(join(tmpdir(), 'ferry-guest-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const diskPath = join(dir, 'disk.raw');
  await writeFile(diskPath, '');
  const disk = await open(diskPath, 'r+');
  t.after(() => disk.close());
  await disk.truncate(64 * 1024 * 1024);

  const started = Date.now();
  const guest = startGuest({
    image,
    logPath: join(dir, 'console.log'),
    drive: `file=${diskPath},format=raw,if=virtio`,
    knobs: { guest: 'writer', blocks: 4096 },
  });
  t.after(() => guest.kill());
  await guest.waitFor((text) => text.includes('ferry-guest boot '), 30_000);
  const bootMs = Date.now() - started;
  const text = await guest.waitFor((text) => {
    const log = parseGuestLog(text);
    return log.lastAcked >= 200 && log.checksOk >= 2;
  }, 30_000);
  const writeMs = Date.now() - started - bootMs;
  await guest.kill();

  const log: GuestLog = parseGuestLog(await guest.log());
  assert.ok(log.lastAcked >= parseGuestLog(text).lastAcked);
  t.diagnostic(
    `boot ${bootMs} ms; ${log.lastAcked} acks, ~${Math.round((parseGuestLog(text).lastAcked * 1000) / writeMs)} writes/s`,
  );
  assert.equal(log.bootIds.length, 1);
  assert.deepEqual(log.problems, []);
  assert.deepEqual(log.bad, []);
  assert.deepEqual(log.errors, []);
  const read = async (offset: number, length: number) => {
    const buffer = Buffer.alloc(length);
    await disk.read(buffer, 0, length, offset);
    return buffer;
  };
  assert.deepEqual(await verifyDisk(read, log), []);
});
