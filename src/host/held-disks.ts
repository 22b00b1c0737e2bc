import type { Tombstone } from './datastore.js';
import { HostError, HostErrorCode } from './errors.js';
import type { DiskEntry, ExportTable } from './export-table.js';
import type { MoveRecord } from './move-journal.js';
import { passThroughOf, remoteDisk } from './pass-through.js';
import {
  askPeer,
  finishRemote,
  type RemoteOutcome,
  type RemoteRecoveryHost,
} from './remote-recovery.js';

/**
 * Disks whose cross-host move ended without this host knowing whether the peer committed: at
 * start (the peer could not tell), or when a move's commit could not be journaled or the agent
 * closed under it. A held disk is served with its guest I/O paused, and nothing may move or
 * remove it, until the peer says where the move ended (never guessed): then it either serves
 * here again or passes through to the peer (remote-recovery.ts).
 */
export interface HeldDisksHost extends RemoteRecoveryHost {
  readonly exports: ExportTable;
  /** Aborted at close: the peer is asked no more. */
  readonly closing: AbortSignal;
  serialize<T>(task: () => Promise<T>): Promise<T>;
  warn(fields: object, message: string): void;
}

export class HeldDisks {
  private readonly held = new Set<string>();

  constructor(private readonly host: HeldDisksHost) {}

  /**
   * Cross-host moves whose commit outcome the peer could not tell at start: each disk is served
   * with its guest I/O held, and the peer is asked again until it answers (never guessed).
   */
  async holdUnresolved(outcomes: readonly RemoteOutcome[]): Promise<void> {
    for (const outcome of outcomes) {
      if (outcome.outcome !== 'held' || outcome.record === undefined) continue;
      const entry = this.host.exports.get(outcome.disk);
      if (entry === undefined) continue;
      await entry.stack.top.pause();
      this.held.add(outcome.disk);
      void this.resolveHeld(entry, outcome.record).catch((error: unknown) => {
        this.host.log.error({ disk: outcome.disk, err: error }, 'resolving a held move failed');
      });
    }
  }

  /**
   * A cross-host move ended without knowing whether the peer committed (the agent is closing,
   * or the commit could not be journaled): the disk's guest I/O stays held and nothing may
   * move or remove it. The journal keeps the move; the next start asks the peer and finishes
   * it one way or the other (remote-recovery.ts), merging any redo log first.
   */
  keepHeld(name: string): void {
    this.held.add(name);
    this.host.warn(
      { disk: name },
      `disk ${name} is held: its cross-host move's outcome is unknown; restart the agent to resolve it with the peer`,
    );
  }

  checkNotHeld(name: string): void {
    if (this.held.has(name)) {
      throw new HostError(
        HostErrorCode.DiskBusy,
        `disk ${name} is held until its peer host says whether an interrupted move committed`,
      );
    }
  }

  private async resolveHeld(entry: DiskEntry, record: MoveRecord): Promise<void> {
    const disk = record.disks[0];
    const host = record.toHost ?? '';
    if (disk === undefined) return;
    const release = (): boolean => this.held.delete(disk.disk);
    for (let attempt = 0; !this.host.closing.aborted; attempt += 1) {
      const peer = this.host.peerNamed(host);
      const state = peer === undefined ? undefined : await askPeer(peer, record, disk);
      if (state === 'aborted') {
        await this.host.journal.remove(record.id);
        release();
        entry.stack.top.resume();
        this.host.warn(
          { disk: disk.disk },
          `host ${host} had not committed disk ${disk.disk}: it is served here again`,
        );
        return;
      }
      if (state === 'committed') {
        await this.host.serialize(async () => {
          const device = remoteDisk({
            name: disk.disk,
            host,
            sizeBytes: entry.descriptor.sizeBytes,
            peerNamed: (name) => this.host.peerNamed(name),
          });
          entry.stack.top.repoint(device);
          this.host.exports.delete(disk.disk);
          await entry.stack.raw.close().catch(() => undefined);
          await finishRemote(
            {
              journal: this.host.journal,
              log: this.host.log,
              datastoreNamed: (name) => this.host.datastoreNamed(name),
              peerNamed: (name) => this.host.peerNamed(name),
            },
            record,
            disk,
            entry.datastore,
            peer,
          );
          // What finishRemote has just written beside the old copy.
          const tombstone: Tombstone = {
            name: disk.disk,
            datastore: record.to,
            generation: disk.generation + 1,
            host,
            sizeBytes: entry.descriptor.sizeBytes,
          };
          this.host.exports.addPassThrough(
            passThroughOf(tombstone, entry.datastore, entry.stack.top),
          );
          release();
          entry.stack.top.resume();
        });
        this.host.warn(
          { disk: disk.disk },
          `host ${host} confirms it committed disk ${disk.disk}: its export here passes through`,
        );
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(5000, 500 * (attempt + 1))));
    }
  }
}
