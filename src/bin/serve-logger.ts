import { type Logger as PinoLogger, pino } from 'pino';
import { PinoPretty } from 'pino-pretty';

/**
 * The log of `ferry serve` (issue 10: "logs that read well on a terminal and stay JSON for
 * machines"). `auto` pretty-prints when stderr is a terminal, and writes JSON lines otherwise
 * (a pipe, a file, journald, a test reading the "ready" line); `json` and `pretty` force one.
 *
 * Both are synchronous: the "ready" line must be out before a test or script acts on it, and a
 * crash must not lose the lines before it. This logger is off the data path.
 */
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export function createServeLogger(
  format: LogFormat = 'auto',
  isTerminal: boolean = process.stderr.isTTY === true,
): PinoLogger {
  const isPretty = format === 'pretty' || (format === 'auto' && isTerminal);
  if (!isPretty) return pino({ level: 'info' }, pino.destination({ dest: 2, sync: true }));
  return pino(
    { level: 'info' },
    PinoPretty({
      destination: 2,
      sync: true,
      colorize: isTerminal,
      translateTime: 'SYS:HH:MM:ss.l',
      // `component` (agent, nbd, api, jobs) leads the message instead of trailing the fields.
      messageFormat: '{if component}{component}: {end}{msg}',
      ignore: 'pid,hostname,component',
    }),
  );
}
