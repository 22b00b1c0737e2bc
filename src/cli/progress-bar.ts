// A CommonJS package: Node gives ES modules its exports object as the default export only.
import cliProgress, {
  type MultiBar,
  type Options,
  type Params,
  type SingleBar,
} from 'cli-progress';
import type { JobEvent, JobRecord, JobStatus } from '../control/job-record.js';
import type { CliContext, TerminalStream } from './context.js';
import {
  formatActivity,
  formatAmount,
  formatClock,
  formatRate,
  percentDone,
} from './job-format.js';

/**
 * Shows a job while the CLI follows it, on standard error (standard output is left to the
 * summary and `--json`). On a terminal: one progress bar, redrawn in place, with notable events
 * printed above it. Elsewhere (a pipe, a CI log): a timestamped line per event and one per tenth
 * of the copy, so a log stays short and readable.
 */
export interface JobRenderer {
  /** The job as the stream starts (its record, with the history so far). */
  start(record: JobRecord): void;
  update(event: JobEvent): void;
  /** Leaves the terminal as it was (cursor shown, bar finished); idempotent. */
  stop(): void;
}

export function createJobRenderer(context: CliContext): JobRenderer {
  return context.terminal === null
    ? new LineRenderer(context.printError)
    : new BarRenderer(context.terminal);
}

/** Events worth a line above the bar; phase, pass and mode are shown inside it. */
const BAR_NOTES: ReadonlySet<JobEvent['type']> = new Set([
  'method',
  'message',
  'speed',
  'rollback',
  'switchover',
  'state',
]);

const BAR_SIZE = 24;

export class BarRenderer implements JobRenderer {
  private readonly bars: MultiBar;
  private bar: SingleBar | null = null;

  constructor(terminal: TerminalStream) {
    this.bars = new cliProgress.MultiBar({
      stream: terminal,
      format: (options: Options, params: Params, payload: { status?: JobStatus }) =>
        formatBarLine(options, params, payload.status),
      barsize: BAR_SIZE,
      hideCursor: true,
      // The follower handles Ctrl-C itself (it detaches) and stops the bar.
      gracefulExit: false,
      clearOnComplete: false,
      autopadding: true,
    });
  }

  start(record: JobRecord): void {
    const { doneBytes, totalBytes } = record.progress;
    this.bar = this.bars.create(totalBytes, doneBytes, { status: record });
  }

  update(event: JobEvent): void {
    const bar = this.bar;
    if (bar === null) return;
    const { doneBytes, totalBytes } = event.job.progress;
    if (totalBytes !== bar.getTotal()) bar.setTotal(totalBytes);
    bar.update(doneBytes, { status: event.job });
    if (event.message !== null && BAR_NOTES.has(event.type)) {
      this.bars.log(`${formatClock(event.time)} ${event.message}\n`);
    }
  }

  stop(): void {
    if (this.bar === null) return;
    this.bar = null;
    // stop() draws the bars but not the notes logged since the last redraw: flush them first.
    this.bars.update();
    this.bars.stop();
  }
}

/** `[=====-----]  45% 450M/1G 120M/s ETA 5s | mirror sync · copy · pass 1 · dirty 12M`. */
export function formatBarLine(options: Options, params: Params, status?: JobStatus): string {
  const bar = cliProgress.Format.BarFormat(params.progress, options);
  if (status === undefined) return `[${bar}]`;
  const percent = `${percentDone(status)}%`.padStart(4);
  const figures = `${percent} ${formatAmount(status)} ${formatRate(status)}`;
  return `[${bar}] ${figures} | ${formatActivity(status)}`;
}

export class LineRenderer implements JobRenderer {
  private readonly write: (text: string) => void;
  /** Tenths of the copy already reported, so each is printed once. */
  private tenthsShown = -1;

  constructor(write: (text: string) => void) {
    this.write = write;
  }

  start(record: JobRecord): void {
    for (const entry of record.events) this.line(entry.time, entry.message);
    this.tenthsShown = Math.floor(percentDone(record) / 10);
  }

  update(event: JobEvent): void {
    if (event.message !== null) this.line(event.time, event.message);
    if (event.type !== 'progress' || event.job.state !== 'running') return;
    const tenths = Math.floor(percentDone(event.job) / 10);
    if (tenths <= this.tenthsShown) return;
    this.tenthsShown = tenths;
    const status = event.job;
    this.line(
      event.time,
      `copied ${percentDone(status)}% (${formatAmount(status)}) at ${formatRate(status)}`,
    );
  }

  stop(): void {}

  private line(time: string, message: string): void {
    this.write(`${formatClock(time)} ${message}\n`);
  }
}
