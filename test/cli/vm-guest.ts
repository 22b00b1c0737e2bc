import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { type FileHandle, open, readFile } from 'node:fs/promises';
import { type TestContext, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { VmInfo } from '../../src/host/vm-service.js';
import type { GuestImage } from '../guest/guest-image.js';
import { hasTool, isCi } from '../nbd/interop-helpers.js';
import type { CommandResult } from './ferry-process.js';

/**
 * The pieces of the VM end-to-end tests (vm-run.test.ts): the recording guest (test/guest) run
 * as a Ferry VM under `ferry serve`, driven through the real `ferry` command, its console read
 * from the VM's home, its disk read from the image file, and every QEMU it started killed
 * whatever the outcome.
 */

/** Tools a VM test needs: QEMU, iproute2, and apt for building the guest image on first use. */
export const VM_TOOLS = ['qemu-system-x86_64', 'ip', 'apt-get', 'dpkg-deb'] as const;

/**
 * `test()` for a case that runs real VMs. Outside CI a missing tool (or a `blocker` reason, such
 * as network namespaces being unavailable) skips it with the reason; with CI=true it fails.
 */
export function vmTest(
  name: string,
  options: {
    readonly timeoutMs: number;
    readonly blocker?: () => string | undefined;
    /** Runs, but a failure is reported as TODO: for a known bug, named here. */
    readonly todo?: string;
  },
  body: (t: TestContext) => Promise<void>,
): void {
  const missing = VM_TOOLS.filter((tool) => !hasTool(tool));
  const reason = missing.length > 0 ? `${missing.join(', ')} not installed` : options.blocker?.();
  if (reason !== undefined && !isCi) {
    test(name, { skip: reason }, () => undefined);
    return;
  }
  const todo = options.todo === undefined ? {} : { todo: options.todo };
  test(name, { timeout: options.timeoutMs, ...todo }, async (t) => {
    if (reason !== undefined) throw new Error(`${reason}; CI=true, so VM tests may not skip`);
    await body(t);
  });
}

/** The kernel command line of the writer guest over the first `blocks` 4 KiB blocks of /dev/vda. */
export function writerAppend(blocks: number): string {
  return `console=ttyS0 quiet panic=-1 ferry.guest=writer ferry.blocks=${blocks}`;
}

/** The kernel command line of the idle guest (boot and tick lines, no disk I/O). */
export const IDLE_APPEND = 'console=ttyS0 quiet panic=-1 ferry.guest=idle';

/** `ferry vm create` arguments booting the test guest under TCG with 256 MiB of RAM. */
export function guestCreateArgs(
  vm: string,
  disk: string,
  image: GuestImage,
  append: string,
): string[] {
  return [
    ...['vm', 'create', vm, '--disk', disk, '--memory', '256M', '--accel', 'tcg'],
    ...['--kernel', image.kernel, '--initrd', image.initrd, '--append', append],
  ];
}

/** The `ferry` command against one agent, with assertions on the outcome. */
export interface FerryCli {
  run(args: readonly string[]): Promise<CommandResult>;
  /** Runs `args`, asserts exit code 0, resolves with stdout. */
  ok(args: readonly string[]): Promise<string>;
  /** Runs `args --json`, asserts exit code 0, resolves with the parsed output. */
  json<T>(args: readonly string[]): Promise<T>;
  /** Runs `args`, asserts a non-zero exit and a `ferry: ...` message matching `why`. */
  refused(args: readonly string[], why: RegExp): Promise<CommandResult>;
  vm(name: string): Promise<VmInfo>;
}

export function ferryCli(run: (args: readonly string[]) => Promise<CommandResult>): FerryCli {
  const ok = async (args: readonly string[]): Promise<string> => {
    const result = await run(args);
    assert.equal(result.code, 0, `ferry ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
    return result.stdout;
  };
  const json = async <T>(args: readonly string[]): Promise<T> =>
    JSON.parse(await ok([...args, '--json'])) as T;
  return {
    run,
    ok,
    json,
    async refused(args, why) {
      const result = await run(args);
      const said = `ferry ${args.join(' ')}: exit ${result.code}, stderr ${result.stderr}`;
      assert.notEqual(result.code, 0, `${said}: should have been refused`);
      assert.match(result.stderr, /^ferry: /m, said);
      assert.match(result.stderr, why, said);
      return result;
    },
    vm: (name) => json<VmInfo>(['vm', 'show', name]),
  };
}

/** Whether process `pid` exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Field 3, after the parenthesised command name (which may hold spaces), is the state.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

const KILL_WAIT_MS = 5_000;

/** SIGKILLs `pid` if it runs and waits (up to 5 s) until it is gone. */
export async function killPid(pid: number): Promise<void> {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // It exited between the check and the kill.
  }
  const deadline = Date.now() + KILL_WAIT_MS;
  while (isAlive(pid) && Date.now() < deadline) await sleep(20);
}

/**
 * The QEMU processes a test may have started: pids seen, and pid files whose pid is read at
 * cleanup (a QEMU whose start reply was lost is still found). `killAll` is for `t.after`.
 */
export class QemuReaper {
  private readonly pids = new Set<number>();
  private readonly pidFiles = new Set<string>();

  addPid(pid: number | null): void {
    if (pid !== null) this.pids.add(pid);
  }

  addPidFile(path: string): void {
    this.pidFiles.add(path);
  }

  async killAll(): Promise<void> {
    for (const file of this.pidFiles) {
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (Number.isSafeInteger(pid) && pid > 0) this.pids.add(pid);
    }
    for (const pid of this.pids) await killPid(pid);
  }
}

const POLL_MS = 100;

/**
 * Polls the console `read()` returns until `done(text)` holds and resolves with that text;
 * rejects after `timeoutMs` with the end of the console, or at once if QEMU `pid` is gone.
 */
export async function waitForGuest(
  read: () => Promise<string>,
  done: (text: string) => boolean,
  what: string,
  pid: number,
  timeoutMs: number,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = await read();
    if (done(text)) return text;
    const ends = `console ends:\n${text.slice(-600)}`;
    if (!isAlive(pid)) throw new Error(`QEMU ${pid} is gone while waiting for ${what}; ${ends}`);
    if (Date.now() > deadline) throw new Error(`no ${what} in ${timeoutMs} ms; ${ends}`);
    // The console is a file QEMU appends to; polling it is the only way to follow it.
    await sleep(POLL_MS);
  }
}

/** Reads a console file by its path (empty while it does not exist). */
export function consoleAt(path: string): () => Promise<string> {
  return () => readFile(path, 'utf8').catch(() => '');
}

/**
 * A console file held open: the whole of what QEMU wrote to that file, even once its path is
 * gone or names another file. Call `close` in `t.after`.
 */
export async function holdConsole(
  path: string,
): Promise<{ read: () => Promise<string>; close: () => Promise<void> }> {
  const handle = await open(path, 'r');
  return { read: () => readAll(handle), close: () => handle.close() };
}

async function readAll(handle: FileHandle): Promise<string> {
  const { size } = await handle.stat();
  const buffer = Buffer.alloc(size);
  const { bytesRead } = await handle.read(buffer, 0, size, 0);
  return buffer.toString('utf8', 0, bytesRead);
}

/** `verifyDisk`'s reader over a disk image file; close it in `t.after` or when done. */
export async function openImage(path: string): Promise<{
  read: (offset: number, length: number) => Promise<Buffer>;
  close: () => Promise<void>;
}> {
  const handle = await open(path, 'r');
  return {
    async read(offset, length) {
      const buffer = Buffer.alloc(length);
      await handle.read(buffer, 0, length, offset);
      return buffer;
    },
    close: () => handle.close(),
  };
}
