import { unlink } from 'node:fs/promises';
import type { Provisioning } from '../block/raw-file.js';
import {
  CopyState,
  type CopyStateShape,
  intentRegionBytesFor,
  savedGranuleBytesFor,
} from '../migrate/copy-state.js';
import { errorCodeOf } from '../util/errors.js';
import { readJson, writeJsonAtomic } from './atomic-file.js';

/**
 * The persisted copy state of a local move (copy-state.ts): `<data>/journal/<id>.bitmap`, next to
 * the move's record, one JSON file for all its disks, replaced atomically (write temp, fsync,
 * rename, fsync the directory) on every persist. Its size is bounded: at most 65536 `copied`
 * bits (8 KiB) and 4096 intent bits (512 bytes) per disk, whatever its size. Writes are serialized, and
 * each encodes the states as they are when it starts, so a later write never carries older bits.
 */
const COPY_STATE_VERSION = 1;

interface DiskStateJson {
  readonly disk: string;
  readonly provisioning: Provisioning;
  readonly sizeBytes: number;
  readonly copiedGranuleBytes: number;
  readonly savedGranuleBytes: number;
  readonly intentRegionBytes: number;
  readonly copied: string;
  readonly intent: string;
}

export interface DiskCopyState {
  readonly disk: string;
  /** The destination image's provisioning, as the move created it. */
  readonly provisioning: Provisioning;
  readonly state: CopyState;
}

export class CopyStateFile {
  readonly disks: DiskCopyState[] = [];
  private running: Promise<void> = Promise.resolve();

  private constructor(readonly path: string) {}

  /** A file of fresh states (nothing copied) for `disks`, written durably before it returns. */
  static async create(
    path: string,
    disks: ReadonlyArray<{ disk: string; provisioning: Provisioning; sizeBytes: number }>,
    copiedGranuleBytes: number,
  ): Promise<CopyStateFile> {
    const file = new CopyStateFile(path);
    for (const { disk, provisioning, sizeBytes } of disks) {
      const shape: CopyStateShape = {
        sizeBytes,
        copiedGranuleBytes,
        savedGranuleBytes: savedGranuleBytesFor(sizeBytes, copiedGranuleBytes),
        intentRegionBytes: Math.max(copiedGranuleBytes, intentRegionBytesFor(sizeBytes)),
      };
      file.disks.push({
        disk,
        provisioning,
        state: CopyState.fresh(shape, () => file.persistOf(disk)),
      });
    }
    await file.write();
    return file;
  }

  /** The file at `path`, or undefined if there is none; a broken one throws. */
  static async load(path: string): Promise<CopyStateFile | undefined> {
    let json: unknown;
    try {
      json = await readJson(path);
    } catch (error) {
      if (errorCodeOf(error) === 'ENOENT') return undefined;
      throw error;
    }
    const loose = json as { version?: unknown; disks?: unknown } | null;
    if (loose?.version !== COPY_STATE_VERSION || !Array.isArray(loose.disks)) {
      throw new Error(`${path} is not a version ${COPY_STATE_VERSION} copy state`);
    }
    const file = new CopyStateFile(path);
    for (const each of loose.disks as DiskStateJson[]) {
      const shape: CopyStateShape = {
        sizeBytes: each.sizeBytes,
        copiedGranuleBytes: each.copiedGranuleBytes,
        savedGranuleBytes: each.savedGranuleBytes,
        intentRegionBytes: each.intentRegionBytes,
      };
      const bits = {
        copied: Buffer.from(each.copied, 'base64'),
        intent: Buffer.from(each.intent, 'base64'),
      };
      const state = new CopyState(shape, () => file.persistOf(each.disk), bits);
      file.disks.push({ disk: each.disk, provisioning: each.provisioning, state });
    }
    return file;
  }

  stateOf(disk: string): CopyState | undefined {
    return this.disks.find((each) => each.disk === disk)?.state;
  }

  /**
   * True once a write failed (a full file system, say): the file is deleted and no longer kept,
   * so a crash now rolls the move back instead of resuming it from bits that may be stale. The
   * move and the guest's writes go on; only the resume is given up.
   */
  private isGivenUp = false;

  /** A write that reached the file held some granule as copied (the crash tests' seam waits for it). */
  private hasPersistedCopies = false;

  get isCopyPersisted(): boolean {
    return this.hasPersistedCopies;
  }

  /** Replaces the file with every disk's bits as they are when this write starts. */
  write(): Promise<void> {
    const next = this.running.catch(() => undefined).then(() => this.replace());
    this.running = next;
    return next;
  }

  private async replace(): Promise<void> {
    if (this.isGivenUp) return;
    try {
      const json = this.encode();
      await writeJsonAtomic(this.path, json);
      this.noteWritten(json);
    } catch {
      this.isGivenUp = true;
      await unlink(this.path).catch(() => undefined);
    }
  }

  /** A write, for disk `disk`'s state: resolves with the id of its encoding that was written. */
  private async persistOf(disk: string): Promise<number> {
    let id = 0;
    const next = this.running
      .catch(() => undefined)
      .then(async () => {
        if (this.isGivenUp) {
          this.encode();
          id = this.stateOf(disk)?.lastEncodeId ?? 0;
          return;
        }
        const json = this.encode();
        id = this.stateOf(disk)?.lastEncodeId ?? 0;
        try {
          await writeJsonAtomic(this.path, json);
          this.noteWritten(json);
        } catch {
          this.isGivenUp = true;
          await unlink(this.path).catch(() => undefined);
        }
      });
    this.running = next;
    await next;
    return id;
  }

  async remove(): Promise<void> {
    await this.running.catch(() => undefined);
    await unlink(this.path).catch((error: unknown) => {
      if (errorCodeOf(error) !== 'ENOENT') throw error;
    });
  }

  private noteWritten(json: { disks: readonly DiskStateJson[] }): void {
    this.hasPersistedCopies ||= json.disks.some((each) =>
      Buffer.from(each.copied, 'base64').some((byte) => byte !== 0),
    );
  }

  private encode(): { version: number; disks: DiskStateJson[] } {
    return {
      version: COPY_STATE_VERSION,
      disks: this.disks.map(({ disk, provisioning, state }): DiskStateJson => {
        const { copied, intent } = state.encode();
        return {
          disk,
          provisioning,
          ...state.shape,
          copied: copied.toString('base64'),
          intent: intent.toString('base64'),
        };
      }),
    };
  }
}
