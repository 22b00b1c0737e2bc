import { fileURLToPath } from 'node:url';
import { type Child, spawnChild, stopChild } from './children.js';
import {
  type ConsoleFeed,
  type ConsoleRecorder,
  type ConsoleSide,
  LoopDelay,
  readSocketConsole,
  tailFile,
} from './vm-motion-console.js';

/**
 * The console stamper of the VM motion benchmark: a process of its own, started at nice -10,
 * that reads the guest's consoles (socket chardevs or polled files, vm-motion-console.ts) and
 * stamps every chunk with CLOCK_MONOTONIC as it arrives. The bench process drives QMP, runs the
 * CLI and parses; on a machine with few CPUs and two TCG guests it can be off the CPU for tens
 * of milliseconds, and a stamp taken there would be late by as much.
 *
 * Protocol, over Node's IPC channel (one ordered stream each way):
 *   parent → child  { id, op: 'socket', side, path, timeoutMs }   connect to a socket chardev
 *                   { id, op: 'tail', side, paths, pollMs }       follow a console file
 *                   { id, op: 'close' }                          last reads, then stop
 *   child → parent  { side, atMs, data }                         bytes of a console
 *                   { id, ok: true, resolutions? } | { id, error }
 * Every data message of a feed is sent before the reply to `close`, so once `close` resolves the
 * recorder holds everything the consoles printed.
 */

interface Request {
  readonly id: number;
  readonly op: 'socket' | 'tail' | 'close';
  readonly side?: ConsoleSide;
  readonly path?: string;
  readonly paths?: readonly string[];
  readonly timeoutMs?: number;
  readonly pollMs?: number;
}

type Message =
  | { readonly side: ConsoleSide; readonly atMs: number; readonly data: string }
  | { readonly id: number; readonly ok: true; readonly resolutions?: readonly string[] }
  | { readonly id: number; readonly error: string };

const SCRIPT = fileURLToPath(import.meta.url);
const PRIORITY_NICE = -10;

export class ConsoleStamper {
  private nextId = 0;
  private readonly pending = new Map<
    number,
    { resolve: (resolutions: readonly string[]) => void; reject: (error: Error) => void }
  >();

  private constructor(
    private readonly child: Child,
    recorder: ConsoleRecorder,
  ) {
    child.process.on('message', (message: Message) => {
      if ('data' in message) {
        recorder.feed(message.side, message.data, message.atMs);
        return;
      }
      const waiter = this.pending.get(message.id);
      this.pending.delete(message.id);
      if ('error' in message) waiter?.reject(new Error(`console stamper: ${message.error}`));
      else waiter?.resolve(message.resolutions ?? []);
    });
    void child.exited.then((status) => {
      for (const waiter of this.pending.values()) {
        waiter.reject(new Error(`console stamper exited (${status}): ${child.output()}`));
      }
      this.pending.clear();
    });
  }

  /** Starts a stamper feeding `recorder`. */
  static start(recorder: ConsoleRecorder): ConsoleStamper {
    const args = ['-n', String(PRIORITY_NICE), process.execPath, SCRIPT];
    return new ConsoleStamper(
      spawnChild('console stamper', 'nice', args, process.env, true),
      recorder,
    );
  }

  /** Connects to a socket chardev; resolves once connected (QEMU drops output before that). */
  async socket(side: ConsoleSide, path: string, timeoutMs: number): Promise<void> {
    await this.call({ op: 'socket', side, path, timeoutMs });
  }

  /** Follows whichever of `paths` exists, polled every `pollMs`. */
  async tail(side: ConsoleSide, paths: readonly string[], pollMs: number): Promise<void> {
    await this.call({ op: 'tail', side, paths, pollMs });
  }

  /** Reads what is left, stops; resolves with how precise the stamps were, and ends the child. */
  async close(): Promise<readonly string[]> {
    const resolutions = await this.call({ op: 'close' });
    await stopChild(this.child);
    return resolutions;
  }

  async kill(): Promise<void> {
    await stopChild(this.child);
  }

  private call(request: Omit<Request, 'id'>): Promise<readonly string[]> {
    this.nextId += 1;
    const id = this.nextId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.process.send({ ...request, id });
    });
  }
}

/** The child: serves requests until `close`. */
function runChild(): void {
  const send = (message: Message): void => {
    process.send?.(message);
  };
  const sink = (side: ConsoleSide, data: string, atMs: number): void => send({ side, atMs, data });
  const feeds: ConsoleFeed[] = [];
  const loop = new LoopDelay();
  loop.start();
  process.on('message', (request: Request) => {
    void (async () => {
      try {
        if (request.op === 'socket') {
          const side = request.side ?? 'source';
          feeds.push(
            await readSocketConsole(request.path ?? '', side, sink, request.timeoutMs ?? 30_000),
          );
          send({ id: request.id, ok: true });
        } else if (request.op === 'tail') {
          feeds.push(
            tailFile(request.paths ?? [], request.side ?? 'source', sink, request.pollMs ?? 2),
          );
          send({ id: request.id, ok: true });
        } else {
          for (const feed of feeds) await feed.close();
          const delay = loop.stop();
          const resolutions = [
            ...new Set(feeds.map((feed) => feed.resolution())),
            `stamper event loop delay p99 ${delay.p99Ms.toFixed(1)} ms, max ${delay.maxMs.toFixed(1)} ms (nice ${PRIORITY_NICE})`,
          ];
          send({ id: request.id, ok: true, resolutions });
          process.disconnect?.();
        }
      } catch (error) {
        send({ id: request.id, error: error instanceof Error ? error.message : String(error) });
      }
    })();
  });
}

if (process.argv[1] === SCRIPT) runChild();
