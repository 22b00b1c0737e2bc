import { channel } from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import type { Extent } from '../block/device.js';
import { isBlockError } from '../block/errors.js';
import { assert } from '../util/assert.js';
import type { Logger } from '../util/logger.js';
import { ByteQueue } from './byte-queue.js';
import {
  decodeOptionHeader,
  decodeRequestHeader,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  OPTION_HEADER_BYTES,
  type OptionHeader,
  type RequestHeader,
} from './codec.js';
import { NbdProtocolError } from './errors.js';
import { type ExportAccess, type ExportProvider, type NbdExport, PLAIN_ACCESS } from './exports.js';
import {
  BASE_ALLOCATION_ID,
  handleOption,
  type NegotiatedState,
  newNegotiatedState,
} from './handshake.js';
import { PayloadPool } from './payload-pool.js';
import {
  CLIENT_FLAGS_KNOWN,
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  type ErrnoName,
  HandshakeFlag,
  IHAVEOPT,
  NBDMAGIC,
  OPTION_BYTES_MAX,
  PAYLOAD_BYTES_MAX,
  REQUEST_HEADER_BYTES,
  StateFlag,
} from './protocol.js';
import { validateRequest } from './request.js';
import { type ServerTlsContext, type TlsPeer, upgradeServerSocket } from './tls.js';

/**
 * One client connection, server side: the handshake, then the transmission phase. Requests are
 * parsed straight from the socket's chunks and dispatched at once, so a pipelining client gets
 * replies as each completes, in any order (proto.md, "Transmission phase").
 *
 * Memory is bounded: reading from the socket stops while the requests in flight, their payload
 * bytes, or the replies the client has not yet read pass their limits, and starts again when
 * they fall back (STYLE.md, "Backpressure is explicit").
 */

export type SessionState =
  | 'awaitClientFlags'
  | 'options'
  | 'tlsHandshake'
  | 'transmission'
  | 'closed';

/**
 * The legal edges of the session state machine; `transition` refuses any other. `tlsHandshake`
 * lies between our ACK to NBD_OPT_STARTTLS and the end of the TLS handshake; option haggling
 * then goes on over TLS ("TLS support": there is no way back to plain text).
 */
const EDGES: Record<SessionState, readonly SessionState[]> = {
  awaitClientFlags: ['options', 'closed'],
  options: ['tlsHandshake', 'transmission', 'closed'],
  tlsHandshake: ['options', 'closed'],
  transmission: ['closed'],
  closed: [],
};

const traceChannel = channel('ferry:nbd:session');

/**
 * Runs one NBD_CMD_BLOCK_STATUS reply describes at most: a client asks again from where the
 * reply ends, so a short answer costs it a round trip, while a long one costs the server a
 * seek pair per run up front (a fragmented thin image has thousands).
 */
const BLOCK_STATUS_RUNS_MAX = 64;

export interface SessionLimits {
  /** Requests dispatched to the device and not yet answered. */
  readonly inFlightMax: number;
  /** Data bytes held by requests in flight: write payloads and the read buffers being filled. */
  readonly inFlightBytesMax: number;
  /** Reply bytes queued on the socket that the client has not read yet. */
  readonly replyBacklogBytesMax: number;
}

export const DEFAULT_SESSION_LIMITS: SessionLimits = {
  inFlightMax: 256,
  inFlightBytesMax: 64 * 1024 * 1024,
  replyBacklogBytesMax: 32 * 1024 * 1024,
};

const GREETING = (() => {
  const buf = Buffer.allocUnsafe(18);
  buf.writeBigUInt64BE(NBDMAGIC, 0);
  buf.writeBigUInt64BE(IHAVEOPT, 8);
  buf.writeUInt16BE(HandshakeFlag.FixedNewstyle | HandshakeFlag.NoZeroes, 16);
  return buf;
})();

export class NbdSession {
  private state: SessionState = 'awaitClientFlags';
  private readonly input = new ByteQueue();
  private negotiated: NegotiatedState = newNegotiatedState(false);
  private pendingOption: OptionHeader | null = null;
  private pendingRequest: RequestHeader | null = null;
  /** The pooled buffer a write payload split over socket chunks is being joined in, and its fill. */
  private splitPayload: Buffer | null = null;
  private splitPayloadFilled = 0;
  private active: NbdExport | null = null;
  private inFlightCount = 0;
  private inFlightBytes = 0;
  private isReadPaused = false;
  private isDisconnecting = false;
  private isCorked = false;
  private idleWaiters: (() => void)[] = [];
  /** Write payloads split over socket chunks, and the buffers reads are served from. */
  private readonly payloads: PayloadPool;
  /**
   * Pooled read buffers handed to the socket, oldest first, until their write completes; as many
   * as the reply backlog holds (`replyBacklogBytesMax`).
   */
  private readonly writtenPooled: Buffer[] = [];
  /** The socket we read and write: the TCP one, then the TLS one wrapping it after STARTTLS. */
  private socket: Socket;
  private readonly onSocketData = (chunk: Buffer): void => this.onData(chunk);
  private readonly onSocketDrain = (): void => this.maybeResumeReading();

  constructor(
    socket: Socket,
    private readonly exports: ExportProvider,
    private readonly log: Logger,
    private readonly limits: SessionLimits = DEFAULT_SESSION_LIMITS,
    payloads?: PayloadPool,
    /** Absent: NOTLS mode, STARTTLS is refused. */
    private readonly tls?: ServerTlsContext,
    /** What the connection is known to be before any option (a local socket's: `LOCAL_ACCESS`). */
    private readonly initialAccess: ExportAccess = PLAIN_ACCESS,
  ) {
    this.socket = socket;
    this.payloads = payloads ?? new PayloadPool(limits.inFlightBytesMax);
    socket.setNoDelay(true);
    socket.on('data', this.onSocketData);
    socket.on('drain', this.onSocketDrain);
    socket.on('error', (error) => this.log.debug({ err: error }, 'nbd socket error'));
    // The TCP socket closes under a TLS one too, so this one listener sees every end.
    socket.on('close', () => this.transition('closed'));
    socket.write(GREETING);
  }

  /** Whether the connection runs over TLS (after a successful STARTTLS). */
  get isTls(): boolean {
    return this.negotiated.access.isTls;
  }

  /** The TLS-PSK identity the client proved, or null. */
  get pskIdentity(): string | null {
    return this.negotiated.access.pskIdentity;
  }

  get exportName(): string | null {
    return this.active?.name ?? null;
  }

  get currentState(): SessionState {
    return this.state;
  }

  /**
   * Stops taking requests, lets those in flight finish and send their replies, then closes the
   * socket. Resolves once the socket is closed.
   */
  async close(): Promise<void> {
    this.isDisconnecting = true;
    this.socket.pause();
    await this.whenIdle();
    await this.endSocket();
  }

  private transition(next: SessionState): void {
    if (this.state === next) return;
    assert(EDGES[this.state].includes(next), `nbd session ${this.state} -> ${next} is not allowed`);
    if (traceChannel.hasSubscribers) traceChannel.publish({ from: this.state, to: next });
    this.state = next;
    if (next === 'closed') {
      this.input.skip(this.input.length);
      this.wakeIdleWaiters();
    }
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'closed' || this.isDisconnecting) return;
    this.input.push(chunk);
    try {
      this.pump();
    } catch (error) {
      this.failConnection(error);
    }
  }

  /** Consumes every complete message the input holds, state by state. */
  private pump(): void {
    for (;;) {
      if (this.state === 'awaitClientFlags') {
        if (this.input.length < 4) return;
        this.handleClientFlags(this.input.take(4).readUInt32BE(0));
      } else if (this.state === 'options') {
        if (!this.pumpOption()) return;
      } else if (this.state === 'transmission') {
        if (this.isReadPaused || this.isDisconnecting || !this.pumpRequest()) return;
      } else {
        return;
      }
    }
  }

  /** Client flags (32 bits): unknown bits mean a client we cannot talk to (proto.md). */
  private handleClientFlags(flags: number): void {
    if ((flags & ~CLIENT_FLAGS_KNOWN) !== 0) {
      throw new NbdProtocolError(
        'ERR_NBD_CLIENT_FLAGS',
        `unknown client flags 0x${flags.toString(16)}`,
      );
    }
    this.negotiated = newNegotiatedState(
      (flags & ClientFlag.NoZeroes) !== 0,
      this.tls?.config.mode ?? 'off',
      this.initialAccess,
    );
    this.transition('options');
  }

  private pumpOption(): boolean {
    if (this.pendingOption === null) {
      if (this.input.length < OPTION_HEADER_BYTES) return false;
      const header = decodeOptionHeader(this.input.take(OPTION_HEADER_BYTES));
      if (header.length > OPTION_BYTES_MAX) {
        throw new NbdProtocolError('ERR_NBD_OPTION_TOO_LARGE', `option of ${header.length} bytes`);
      }
      this.pendingOption = header;
    }
    const { option, length } = this.pendingOption;
    if (this.input.length < length) return false;
    const data = this.input.take(length);
    this.pendingOption = null;
    const outcome = handleOption(this.negotiated, this.exports, option, data);
    for (const reply of outcome.replies) this.socket.write(reply);
    if (outcome.next === 'close') {
      this.log.debug({ reason: outcome.reason }, 'nbd handshake ended');
      void this.endSocket();
      this.transition('closed');
      return false;
    }
    if (outcome.next === 'transmission') {
      this.active = outcome.export;
      this.transition('transmission');
    }
    if (outcome.next === 'starttls') {
      this.startTls();
      return false;
    }
    return true;
  }

  /**
   * After our ACK to NBD_OPT_STARTTLS. The client must wait for that reply before it starts TLS
   * ("Fixed newstyle negotiation": no option before the final reply), so a byte already here
   * came before our ACK: a protocol error, not something to guess about. From now on the TCP
   * socket belongs to the TLS layer; what it has buffered goes to TLS, nothing is dropped.
   */
  private startTls(): void {
    const tls = this.tls;
    assert(tls !== undefined, 'STARTTLS accepted without a TLS configuration');
    if (this.input.length > 0) {
      throw new NbdProtocolError(
        'ERR_NBD_BYTES_BEFORE_TLS',
        `${this.input.length} bytes sent after NBD_OPT_STARTTLS before its reply`,
      );
    }
    this.transition('tlsHandshake');
    const plain = this.socket;
    plain.pause();
    plain.off('data', this.onSocketData);
    plain.off('drain', this.onSocketDrain);
    const secure = upgradeServerSocket(
      plain,
      tls,
      (peer) => this.onTlsSecure(peer),
      (error) => this.onTlsFailure(error),
    );
    this.socket = secure;
    secure.on('data', this.onSocketData);
    secure.on('drain', this.onSocketDrain);
  }

  private onTlsSecure(peer: TlsPeer): void {
    if (this.state !== 'tlsHandshake') return;
    this.negotiated.access = { isTls: true, pskIdentity: peer.pskIdentity };
    this.log.debug({ pskIdentity: peer.pskIdentity }, 'nbd TLS started');
    this.transition('options');
  }

  /** A wrong key or certificate ends this connection only; the spec allows no plain fallback. */
  private onTlsFailure(error: Error): void {
    this.log.warn(
      { reason: error.message, remote: this.socket.remoteAddress ?? null },
      'nbd TLS handshake failed; closing connection',
    );
    this.isDisconnecting = true;
    this.socket.destroy();
    this.transition('closed');
  }

  /** Parses one request (header, then a write's payload) and dispatches it; false: need bytes. */
  private pumpRequest(): boolean {
    if (this.pendingRequest === null) {
      if (this.input.length < REQUEST_HEADER_BYTES) return false;
      const header = decodeRequestHeader(this.input.take(REQUEST_HEADER_BYTES));
      if (header.type === Cmd.Write && header.length > PAYLOAD_BYTES_MAX) {
        throw new NbdProtocolError(
          'ERR_NBD_PAYLOAD_TOO_LARGE',
          `write payload of ${header.length} bytes is over the 32 MiB limit`,
        );
      }
      this.pendingRequest = header;
    }
    const header = this.pendingRequest;
    const payloadBytes = header.type === Cmd.Write ? header.length : 0;
    let payload: Buffer | null = null;
    let isPooled = false;
    if (payloadBytes > 0) {
      if (this.splitPayload === null && this.input.isContiguous(payloadBytes)) {
        payload = this.input.take(payloadBytes);
      } else {
        if (!this.fillSplitPayload(payloadBytes)) return false;
        payload = this.splitPayload;
        isPooled = true;
        this.splitPayload = null;
        this.splitPayloadFilled = 0;
      }
    }
    this.pendingRequest = null;
    if (header.type === Cmd.Disc) {
      // proto.md NBD_CMD_DISC: no reply; finish what is in flight, then close.
      void this.close();
      return false;
    }
    const dataBytes = header.type === Cmd.Read || header.type === Cmd.Write ? header.length : 0;
    this.inFlightCount += 1;
    this.inFlightBytes += dataBytes;
    void this.serve(header, payload, dataBytes, isPooled);
    this.maybePauseReading();
    return true;
  }

  /**
   * A payload in one socket chunk is used in place; one split over chunks is joined in a pooled
   * buffer, chunk by chunk as they arrive, while each is still in the CPU's cache (and the chunk
   * can be dropped at once). True once all `length` bytes are in `splitPayload`.
   */
  private fillSplitPayload(length: number): boolean {
    this.splitPayload ??= this.payloads.acquire(length);
    const count = Math.min(this.input.length, length - this.splitPayloadFilled);
    if (count > 0) {
      const at = this.splitPayloadFilled;
      this.input.takeInto(this.splitPayload.subarray(at, at + count));
      this.splitPayloadFilled += count;
    }
    return this.splitPayloadFilled === length;
  }

  private async serve(
    header: RequestHeader,
    payload: Buffer | null,
    dataBytes: number,
    isPooled: boolean,
  ): Promise<void> {
    const active = this.active;
    assert(active !== null, 'request without an export');
    const error = validateRequest(header, {
      device: active.device,
      isStructured: this.negotiated.isStructured,
      isBaseAllocation:
        this.negotiated.isBaseAllocation && this.negotiated.metaExportName === active.name,
    });
    try {
      if (error !== 0) this.replyError(header, error, 'invalid request');
      else await this.execute(header, payload, active);
    } catch (failure) {
      this.replyFailure(header, failure);
    } finally {
      this.inFlightCount -= 1;
      this.inFlightBytes -= dataBytes;
      if (isPooled && payload !== null) this.payloads.release(payload);
      if (this.inFlightCount === 0) this.wakeIdleWaiters();
      this.maybeResumeReading();
    }
  }

  /** Runs a valid request against the device and sends its reply (handlers named per spec). */
  private async execute(
    header: RequestHeader,
    payload: Buffer | null,
    active: NbdExport,
  ): Promise<void> {
    const { device } = active;
    const { offset, length, flags } = header;
    const isFua = (flags & CmdFlag.Fua) !== 0;
    switch (header.type) {
      case Cmd.Read: {
        if (length === 0) return this.handleCmdRead(header, Buffer.alloc(0), null);
        // Served from a pooled buffer, given back once the socket has written the reply.
        const target = this.payloads.acquire(length);
        let data: Buffer;
        try {
          data = await device.read(offset, length, target);
        } catch (error) {
          this.payloads.release(target);
          throw error;
        }
        return this.handleCmdRead(header, data, target);
      }
      case Cmd.Write:
        if (length > 0) await device.write(offset, payload ?? Buffer.alloc(0), { fua: isFua });
        return this.replyOk(header);
      case Cmd.Flush:
        await device.flush();
        return this.replyOk(header);
      case Cmd.Trim:
        if (length > 0) await device.trim(offset, length, { fua: isFua });
        return this.replyOk(header);
      case Cmd.Cache:
        if (length > 0) await device.cache(offset, length);
        return this.replyOk(header);
      case Cmd.WriteZeroes:
        return this.handleCmdWriteZeroes(header, isFua, active);
      case Cmd.BlockStatus:
        // REQ_ONE: one run is all the reply may carry, so work out no more (proto.md).
        return this.handleCmdBlockStatus(
          header,
          await device.extents(
            offset,
            length,
            (header.flags & CmdFlag.ReqOne) !== 0 ? 1 : BLOCK_STATUS_RUNS_MAX,
          ),
        );
      default:
        return this.replyError(header, Errno.EINVAL, 'unknown command');
    }
  }

  /** `target`: the pooled buffer the read was asked to fill; `data` may be it or the device's own. */
  private handleCmdRead(header: RequestHeader, data: Buffer, target: Buffer | null): void {
    const head = this.negotiated.isStructured
      ? encodeOffsetDataHeader(header.cookie, header.offset, data.length, true)
      : encodeSimpleReply(header.cookie, 0);
    if (target === null || data !== target) {
      if (target !== null) this.payloads.release(target);
      this.send(head, data);
    } else if (this.state === 'closed') {
      this.payloads.release(target);
    } else {
      this.send(head);
      this.writtenPooled.push(target);
      this.socket.write(target, this.onPooledWritten);
    }
  }

  /** NBD_CMD_WRITE_ZEROES: FAST_ZERO fails at once unless zeroing is native (proto.md). */
  private async handleCmdWriteZeroes(
    header: RequestHeader,
    isFua: boolean,
    active: NbdExport,
  ): Promise<void> {
    const fastOnly = (header.flags & CmdFlag.FastZero) !== 0;
    if (fastOnly && active.device.caps.zero !== 'native') {
      return this.replyError(header, Errno.ENOTSUP, 'zeroing is not faster than writing');
    }
    if (header.length > 0) {
      await active.device.writeZeroes(header.offset, header.length, {
        fua: isFua,
        mayTrim: (header.flags & CmdFlag.NoHole) === 0,
        fastOnly,
      });
    }
    return this.replyOk(header);
  }

  /** NBD_CMD_BLOCK_STATUS for base:allocation: one chunk of (length, flags) descriptors. */
  private handleCmdBlockStatus(header: RequestHeader, extents: Extent[]): void {
    const isOne = (header.flags & CmdFlag.ReqOne) !== 0;
    const end = header.offset + header.length;
    const descriptors: { length: number; flags: number }[] = [];
    for (const extent of extents) {
      const length = Math.min(extent.offset + extent.length, end) - extent.offset;
      if (length <= 0) break;
      const flags =
        extent.kind === 'hole'
          ? StateFlag.Hole | StateFlag.Zero
          : extent.kind === 'zero'
            ? StateFlag.Zero
            : 0;
      descriptors.push({ length, flags });
      if (isOne) break;
    }
    if (descriptors.length === 0) {
      this.replyError(header, Errno.EIO, 'device returned no extents');
      return;
    }
    this.send(encodeBlockStatusChunk(header.cookie, BASE_ALLOCATION_ID, descriptors, true));
  }

  private replyOk(header: RequestHeader): void {
    this.send(encodeSimpleReply(header.cookie, 0));
  }

  private replyError(header: RequestHeader, errno: number, message: string): void {
    // A structured client must get chunks for READ and BLOCK_STATUS (proto.md "Structured replies").
    const needsChunk =
      this.negotiated.isStructured && (header.type === Cmd.Read || header.type === Cmd.BlockStatus);
    if (needsChunk) this.send(encodeErrorChunk(header.cookie, errno, message));
    else this.send(encodeSimpleReply(header.cookie, errno));
  }

  private replyFailure(header: RequestHeader, failure: unknown): void {
    if (isBlockError(failure)) {
      this.log.debug(
        { err: failure, type: header.type, offset: header.offset },
        'nbd request failed',
      );
      this.replyError(header, Errno[failure.code as ErrnoName], failure.message);
      return;
    }
    // Not an operating error: a bug below us. The client still gets an answer, not a hang.
    this.log.error({ err: failure, type: header.type }, 'nbd request failed unexpectedly');
    this.replyError(header, Errno.EIO, 'internal error');
  }

  /**
   * Queues reply buffers. Replies finished in the same turn of the event loop leave in one
   * writev: the socket is corked on the first and uncorked in the check phase (setImmediate),
   * after the poll phase has run every socket read and every thread-pool completion that was
   * ready. A tick would flush after each completion: one system call per 4 KiB reply.
   */
  private send(first: Buffer, second?: Buffer): void {
    if (this.state === 'closed') return;
    if (!this.isCorked) {
      this.isCorked = true;
      this.socket.cork();
      setImmediate(this.uncork);
    }
    this.socket.write(first);
    if (second !== undefined && second.length > 0) this.socket.write(second);
  }

  /**
   * A pooled read buffer's write is done (or failed: the socket is gone): back to the pool. A
   * stream calls write callbacks in write order, so the oldest buffer is the one written.
   */
  private readonly onPooledWritten = (): void => {
    const written = this.writtenPooled.shift();
    if (written !== undefined) this.payloads.release(written);
  };

  private readonly uncork = (): void => {
    this.isCorked = false;
    this.socket.uncork();
  };

  private maybePauseReading(): void {
    if (this.isReadPaused) return;
    if (
      this.inFlightCount >= this.limits.inFlightMax ||
      this.inFlightBytes >= this.limits.inFlightBytesMax ||
      this.socket.writableLength >= this.limits.replyBacklogBytesMax
    ) {
      this.isReadPaused = true;
      this.socket.pause();
    }
  }

  private maybeResumeReading(): void {
    if (!this.isReadPaused || this.isDisconnecting || this.state === 'closed') return;
    if (
      this.inFlightCount < this.limits.inFlightMax / 2 &&
      this.inFlightBytes < this.limits.inFlightBytesMax / 2 &&
      this.socket.writableLength < this.limits.replyBacklogBytesMax / 2
    ) {
      this.isReadPaused = false;
      this.socket.resume();
      try {
        this.pump();
      } catch (error) {
        this.failConnection(error);
      }
    }
  }

  /** A protocol violation: log why, then drop this connection only. */
  private failConnection(error: unknown): void {
    if (error instanceof NbdProtocolError) {
      this.log.warn(
        { code: error.code, reason: error.message },
        'nbd protocol error; closing connection',
      );
    } else {
      this.log.error({ err: error }, 'nbd session failed; closing connection');
    }
    this.isDisconnecting = true;
    this.socket.destroy();
    this.transition('closed');
  }

  private whenIdle(): Promise<void> {
    if (this.inFlightCount === 0 || this.state === 'closed') return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private wakeIdleWaiters(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const wake of waiters) wake();
  }

  private endSocket(): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
      // Reading may be paused (close() stops taking requests): the peer's FIN is only seen, and
      // 'close' only comes, once what it sent is read. onData drops it while disconnecting.
      this.socket.resume();
      // A client that never reads its last replies must not hold shutdown forever.
      setTimeout(() => this.socket.destroy(), 5000).unref();
    });
  }
}
