import { MigrateError, MigrateErrorCode } from '../migrate/errors.js';
import type { MigrationEvent } from '../migrate/migration.js';
import { errorMessageOf } from '../util/errors.js';
import type { Logger } from '../util/logger.js';
import type { MoveJournal, MoveRecord } from './move-journal.js';
import type { ReceiveState } from './receiver.js';
import type { PeerLink } from './remote-mover.js';

/**
 * The commit of a move to another host, as its source runs it with the guest held — a disk's
 * (remote-mover.ts) or a VM's (vm-motion.ts), whose peer commits with one call either way:
 *
 *   1. `commitRequested: true` journaled here: from now on only the peer knows the outcome
 *   2. the peer's commit (its commit point)
 *   3. `committed: true` journaled here
 *
 * If (2)'s answer is lost, the peer is asked (`resolve`, which aborts an uncommitted receive so
 * the answer stays true) until it answers; it is never guessed. Only the agent closing stops the
 * asking: the outcome is then unknown (`ERR_COMMIT_UNKNOWN`), the guest stays held, and the next
 * start asks again. A peer that answers "aborted" fails the move (`ERR_TARGET_FAILED`): it rolls
 * back here.
 */
export interface PeerCommit {
  readonly peer: PeerLink;
  readonly journal: MoveJournal;
  readonly log: Logger;
  readonly record: MoveRecord;
  /** What is committed, for messages: `disk vm1`, `VM web1`. */
  readonly subject: string;
  readonly commit: { readonly path: string; readonly body: object };
  readonly resolve: { readonly path: string; readonly body: object };
  readonly closing: AbortSignal;
  readonly onEvent: (event: MigrationEvent) => void;
}

const CALL_TIMEOUT_MS = 10_000;
const RESOLVE_RETRY_MS = [250, 500, 1000, 2000, 5000] as const;
const ASK_ONCE_TIMEOUT_MS = 5000;

/** Steps 1–3; resolves with the committed record. */
export async function commitAtPeer(commit: PeerCommit): Promise<MoveRecord> {
  const { peer, journal, subject, onEvent } = commit;
  const requested: MoveRecord = { ...commit.record, commitRequested: true };
  await journal.write(requested);
  let state: ReceiveState;
  try {
    const answer = await peer.post<{ state: ReceiveState }>(
      commit.commit.path,
      commit.commit.body,
      {
        timeoutMs: CALL_TIMEOUT_MS,
      },
    );
    state = answer.state;
  } catch (error) {
    commit.log.warn(
      { move: requested.id, host: peer.name, err: error },
      `the commit at host ${peer.name} did not answer; asking it for the outcome with the guest held`,
    );
    onEvent({
      type: 'message',
      message: `host ${peer.name} did not confirm the commit (${errorMessageOf(error)}); guest I/O is held until it answers`,
    });
    state = await askUntilAnswered(commit);
  }
  if (state !== 'committed') {
    throw new MigrateError(
      MigrateErrorCode.TargetFailed,
      `host ${peer.name} did not commit ${subject}; it stays here`,
    );
  }
  // The peer is the authority now, whatever happens here: a journal that cannot say so must
  // not let the migration roll back to this copy. Held; the next start asks the peer again.
  const committed: MoveRecord = { ...requested, committed: true };
  try {
    await journal.write(committed);
  } catch (error) {
    throw new MigrateError(
      MigrateErrorCode.CommitUnknown,
      `host ${peer.name} committed ${subject} but this host could not journal it (${errorMessageOf(error)}); it stays held until the agent restarts`,
      { cause: error },
    );
  }
  return committed;
}

/** Asks the peer until it says committed or aborted; stops (unknown) only when the agent closes. */
async function askUntilAnswered(commit: PeerCommit): Promise<ReceiveState> {
  const { peer, closing, onEvent, subject } = commit;
  for (let attempt = 0; ; attempt += 1) {
    if (closing.aborted) {
      throw new MigrateError(
        MigrateErrorCode.CommitUnknown,
        `the outcome of the commit at host ${peer.name} is unknown; ${subject} stays held until the agent restarts and asks again`,
      );
    }
    try {
      const answer = await peer.post<{ state: ReceiveState }>(
        commit.resolve.path,
        commit.resolve.body,
        { timeoutMs: CALL_TIMEOUT_MS },
      );
      onEvent({ type: 'message', message: `host ${peer.name} answered: ${answer.state}` });
      return answer.state;
    } catch (error) {
      const waitMs = RESOLVE_RETRY_MS[Math.min(attempt, RESOLVE_RETRY_MS.length - 1)] ?? 5000;
      if (attempt % 5 === 0) {
        onEvent({
          type: 'message',
          message: `still asking host ${peer.name} whether it committed (${errorMessageOf(error)}); guest I/O held`,
        });
      }
      await sleep(waitMs, closing);
    }
  }
}

/** The peer's word on a commit, asked once at start (recovery); undefined when it cannot be had. */
export async function askPeerOnce(
  peer: PeerLink,
  resolve: { readonly path: string; readonly body: object },
): Promise<ReceiveState | undefined> {
  try {
    const answer = await peer.post<{ state: ReceiveState }>(resolve.path, resolve.body, {
      timeoutMs: ASK_ONCE_TIMEOUT_MS,
    });
    return answer.state;
  } catch {
    return undefined;
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}
