import type { HostPair } from '../test/cross-host/netns.js';
import type { LinkSpec } from './cross-host-link.js';

/**
 * ╔══════════════════════════════════════════════════════════════════════════════════════════╗
 * ║ THE FERRY SIDE OF THE CROSS-HOST BENCHMARK: TO BE FILLED IN once cross-host migration     ║
 * ║ lands (issue 7). Until then each throws FerryNotImplementedError and the report prints     ║
 * ║ "not implemented yet" in Ferry's rows; the reference rows are measured all the same.       ║
 * ╚══════════════════════════════════════════════════════════════════════════════════════════╝
 *
 * What each must do, so its numbers compare with the references in the same table:
 *
 * `ferryIdleCopy`: start `ferry serve` in each namespace (test/cross-host/serve-in.ts,
 * `startServeIn`, with `--data` under `dir`), import `sourcePath` on host A as a thick disk
 * (a copy of it: an import moves the file), introduce the hosts to each other with a PSK, then
 * time a live disk move A → B with no guest I/O, from asking to the job's end (the destination
 * flushed and committed). The delay: reach B through the relay (`routeTo` in cross-host-link.ts)
 * for both B's API and its NBD port, as the references do. `isTls` on/off: the TLS cost section.
 * Resolve with the wall time in ms.
 *
 * `ferryUnderLoad`: the same move while fio (4k random writes, iodepth 16, `runFio`-style on
 * host A through the source export) runs: fio alone for `baselineSeconds`, then the move with
 * `--mirror sync` or `auto`; resolve with the guest IOPS before and during, the move's time and
 * its downtime (from the job's switchover event).
 */

export class FerryNotImplementedError extends Error {
  constructor(what: string) {
    super(`${what}: not implemented yet (cross-host migration, issue 7)`);
    this.name = 'FerryNotImplementedError';
  }
}

export interface FerryIdleCopyRequest {
  readonly sourcePath: string;
  readonly sizeBytes: number;
  readonly link: LinkSpec;
  readonly isTls: boolean;
  /** A scratch directory for the data dirs; the bench removes it. */
  readonly dir: string;
  readonly timeoutMs: number;
}

/** Wall time in ms of an idle cross-host move of the whole disk. */
export async function ferryIdleCopy(
  _pair: HostPair,
  _request: FerryIdleCopyRequest,
): Promise<number> {
  throw new FerryNotImplementedError('ferryIdleCopy');
}

export type MirrorMode = 'sync' | 'auto';

export interface FerryUnderLoadRequest {
  readonly sourcePath: string;
  readonly sizeBytes: number;
  readonly link: LinkSpec;
  readonly mirror: MirrorMode;
  /** Seconds of fio alone before the move starts. */
  readonly baselineSeconds: number;
  readonly dir: string;
  readonly timeoutMs: number;
}

export interface FerryUnderLoadSample {
  readonly iopsBefore: number;
  readonly iopsDuring: number;
  readonly moveMs: number;
  readonly downtimeMs: number;
}

export async function ferryUnderLoad(
  _pair: HostPair,
  _request: FerryUnderLoadRequest,
): Promise<FerryUnderLoadSample> {
  throw new FerryNotImplementedError('ferryUnderLoad');
}
