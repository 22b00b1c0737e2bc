import { readFile, writeFile } from 'node:fs/promises';

/**
 * The agent's CPU time and memory as the kernel counts them. CPU: user + system time from
 * /proc/PID/stat, which a shared, busy machine disturbs far less than wall time. Memory
 * (/proc/PID/status): resident set now (VmRSS) and
 * its peak since the process started or the peak was last reset (VmHWM). Writing 5 to
 * /proc/PID/clear_refs resets the peak to the current RSS (Linux ≥ 4.0; the process must be ours),
 * so each measured step can report its own peak.
 */
export interface AgentMemory {
  readonly rssBytes: number;
  readonly peakBytes: number;
}

export async function readAgentMemory(pid: number): Promise<AgentMemory> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status);
    if (match?.[1] === undefined) throw new Error(`/proc/${pid}/status has no ${name}`);
    return Number(match[1]) * 1024;
  };
  return { rssBytes: field('VmRSS'), peakBytes: field('VmHWM') };
}

/** Resets VmHWM to the current RSS; false when the kernel refuses (then the peak is lifelong). */
export async function resetPeak(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    // EACCES or EINVAL on an old kernel: report the lifelong peak, which is never lower.
    return false;
  }
}

/** MiB with one decimal. */
export function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}

/** Clock ticks per second of /proc/PID/stat's times (USER_HZ: 100 on every Linux port). */
const TICKS_PER_SECOND = 100;

/** The CPU seconds (user + system) the process has used so far. */
export async function readAgentCpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // "pid (comm) state ppid ...": comm may hold spaces, so count fields after its ')'. utime and
  // stime are fields 14 and 15, the 12th and 13th after it.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  if (!Number.isFinite(ticks)) throw new Error(`/proc/${pid}/stat: no utime and stime`);
  return ticks / TICKS_PER_SECOND;
}
