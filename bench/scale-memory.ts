import { readFile, writeFile } from 'node:fs/promises';

/**
 * The agent's memory as the kernel counts it (/proc/PID/status): resident set now (VmRSS) and
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
