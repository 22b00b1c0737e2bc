import type { DiskInfo } from '../host/agent.js';

/**
 * What the API says about a disk: the agent's facts plus where to reach it over NBD. The agent
 * does not know the NBD address (the entry picks it, possibly port 0), the API is told it.
 */
export interface NbdAddress {
  /** `nbd://HOST:PORT`, no trailing slash. */
  readonly url: string;
  /** Unix socket path, when the server listens on one. */
  readonly socketPath?: string;
}

export interface DiskView extends DiskInfo {
  /** `nbd://HOST:PORT/NAME` (DESIGN.md: export name = disk name). */
  readonly uri: string;
  /** `nbd+unix:///NAME?socket=PATH`, or null without a socket. */
  readonly socketUri: string | null;
}

export function viewDisk(disk: DiskInfo, nbd: NbdAddress): DiskView {
  // Disk names are URI-safe (names.ts), so they need no escaping.
  return {
    ...disk,
    uri: `${nbd.url}/${disk.name}`,
    socketUri:
      nbd.socketPath === undefined ? null : `nbd+unix:///${disk.name}?socket=${nbd.socketPath}`,
  };
}
