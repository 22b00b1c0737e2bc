import { connect, type Socket } from 'node:net';
import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from '../block/device.js';
import { BlockError, BlockErrorCode } from '../block/errors.js';
import { assert } from '../util/assert.js';
import { ByteQueue } from './byte-queue.js';
import {
  decodeOptionReplyHeader,
  encodeLengthPrefixed,
  encodeOptionHeader,
  encodeRequestHeader,
  OPTION_REPLY_HEADER_BYTES,
  readUint64,
} from './codec.js';
import { NbdProtocolError } from './errors.js';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Cmd,
  CmdFlag,
  Errno,
  HandshakeFlag,
  IHAVEOPT,
  Info,
  NBDMAGIC,
  Opt,
  PAYLOAD_BYTES_MAX,
  Rep,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
  StateFlag,
  TransmitFlag,
} from './protocol.js';
import { type NbdClientTls, startClientTls } from './tls.js';

/**
 * An NBD client that is a `BlockDevice`: the way Ferry reaches a remote datastore, and the way
 * tests drive our server. It negotiates fixed newstyle, structured replies and `base:allocation`,
 * then pipelines requests on one connection, matching replies to requests by cookie.
 */
export interface NbdClientOptions {
  readonly exportName: string;
  readonly host?: string;
  readonly port?: number;
  /** Unix socket path; used instead of host/port when given. */
  readonly path?: string;
  /** Ask for structured replies and `base:allocation` (default true). */
  readonly wantStructured?: boolean;
  /**
   * Speak TLS: NBD_OPT_STARTTLS is the first option (proto.md, "Client-side requirements": a
   * client that wants TLS sends it first, and gives up if the server refuses). With `psk` the
   * client proves that identity's key; with `x509` it checks the server's certificate.
   */
  readonly tls?: NbdClientTls;
}

interface Pending {
  readonly type: number;
  readonly offset: number;
  readonly length: number;
  readonly data: Buffer | null;
  readonly extents: Extent[];
  errno: number;
  errorMessage: string;
  resolve(value: Buffer | Extent[] | undefined): void;
  reject(error: BlockError): void;
}

const ERRNO_NAMES = new Map<number, BlockErrorCode>(
  Object.entries(Errno).map(([name, value]) => [value, name as BlockErrorCode]),
);

export class NbdClient implements BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits;
  readonly transmissionFlags: number;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private readonly replies = new ByteQueue();
  private isClosed = false;

  private constructor(
    private readonly socket: Socket,
    negotiated: Negotiated,
    leftover: ByteQueue,
  ) {
    this.size = negotiated.size;
    this.transmissionFlags = negotiated.flags;
    const has = (flag: number): boolean => (negotiated.flags & flag) !== 0;
    this.caps = {
      isReadOnly: has(TransmitFlag.ReadOnly),
      canFlush: has(TransmitFlag.SendFlush),
      fua: has(TransmitFlag.SendFua) ? 'native' : 'none',
      zero: has(TransmitFlag.SendWriteZeroes) ? 'native' : 'emulate',
      trim: has(TransmitFlag.SendTrim) ? 'native' : 'none',
      canExtents: negotiated.isBaseAllocation,
      isMultiConnSafe: has(TransmitFlag.CanMultiConn),
    };
    this.limits = {
      minimumBytes: negotiated.minimumBytes,
      preferredBytes: negotiated.preferredBytes,
      maximumBytes: negotiated.maximumBytes,
      inFlightMax: 64,
    };
    this.isStructured = negotiated.isStructured;
    const rest = leftover.take(leftover.length);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('close', () => this.failAll('connection to the NBD server closed'));
    socket.on('error', () => {});
    if (rest.length > 0) this.onData(rest);
  }

  readonly isStructured: boolean;

  /**
   * Connects, negotiates and resolves with a ready device. Rejects with `ERR_NBD_TLS_REQUIRED`
   * when the server insists on TLS and `tls` is not given, `ERR_NBD_TLS_REFUSED` when `tls` is
   * given and the server will not start it, `ERR_NBD_TLS_HANDSHAKE` when the handshake fails
   * (wrong key, untrusted certificate); the socket is closed in every failure.
   */
  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    let socket: Socket = await openSocket(options);
    try {
      let reader = new SocketReader(socket);
      await greet(socket, reader);
      if (options.tls !== undefined) {
        await sendStartTls(socket, reader);
        reader.detach();
        socket = await startClientTls(socket, options.tls, options.host);
        reader = new SocketReader(socket);
      }
      const negotiated = await negotiate(socket, reader, options);
      reader.detach();
      return new NbdClient(socket, negotiated, reader.queue);
    } catch (error) {
      socket.destroy();
      throw error;
    }
  }

  read(offset: number, length: number): Promise<Buffer> {
    assert(length <= this.limits.maximumBytes, 'read larger than the negotiated maximum');
    return this.request(Cmd.Read, 0, offset, length, null) as Promise<Buffer>;
  }

  async write(offset: number, data: Buffer, options: WriteOptions = {}): Promise<void> {
    assert(data.length <= this.limits.maximumBytes, 'write larger than the negotiated maximum');
    await this.request(Cmd.Write, options.fua ? CmdFlag.Fua : 0, offset, data.length, data);
  }

  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    if (this.caps.zero !== 'native') {
      if (options.fastOnly) throw new BlockError(BlockErrorCode.ENOTSUP, 'server cannot zero fast');
      for (let at = offset; at < offset + length; at += this.limits.maximumBytes) {
        const n = Math.min(this.limits.maximumBytes, offset + length - at);
        await this.write(at, Buffer.alloc(n), options);
      }
      return;
    }
    let flags = options.fua ? CmdFlag.Fua : 0;
    if (options.mayTrim === false) flags |= CmdFlag.NoHole;
    if (options.fastOnly) flags |= CmdFlag.FastZero;
    await this.request(Cmd.WriteZeroes, flags, offset, length, null);
  }

  async trim(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    if (this.caps.trim === 'none') return;
    await this.request(Cmd.Trim, options.fua ? CmdFlag.Fua : 0, offset, length, null);
  }

  async flush(): Promise<void> {
    if (!this.caps.canFlush) return;
    await this.request(Cmd.Flush, 0, 0, 0, null);
  }

  async cache(offset: number, length: number): Promise<void> {
    if ((this.transmissionFlags & TransmitFlag.SendCache) === 0) return;
    await this.request(Cmd.Cache, 0, offset, length, null);
  }

  async extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    const asked = Math.min(length, 0xffffffff, this.size - offset);
    if (!this.caps.canExtents) return [{ offset, length: asked, kind: 'data' }];
    const flags = runsMax === 1 ? CmdFlag.ReqOne : 0;
    return this.request(Cmd.BlockStatus, flags, offset, asked, null) as Promise<Extent[]>;
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    // A connection the server already closed has fired its 'close' event: waiting for it would
    // hang forever.
    if (this.socket.closed) return;
    const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()));
    this.socket.end(encodeRequestHeader(Cmd.Disc, 0, 0n, 0, 0));
    setTimeout(() => this.socket.destroy(), 2000).unref();
    await closed;
  }

  /** Requests still awaiting a reply (tests use it to see pipelining). */
  get inFlightCount(): number {
    return this.pending.size;
  }

  private request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    payload: Buffer | null,
  ): Promise<Buffer | Extent[] | undefined> {
    if (this.isClosed || this.socket.destroyed) {
      return Promise.reject(new BlockError(BlockErrorCode.ESHUTDOWN, 'NBD client is closed'));
    }
    const cookie = this.nextCookie;
    this.nextCookie += 1n;
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, {
        type,
        offset,
        length,
        data: type === Cmd.Read ? Buffer.alloc(length) : null,
        extents: [],
        errno: 0,
        errorMessage: '',
        resolve,
        reject,
      });
      this.socket.write(encodeRequestHeader(type, flags, cookie, offset, length));
      if (payload !== null && payload.length > 0) this.socket.write(payload);
    });
  }

  private onData(chunk: Buffer): void {
    this.replies.push(chunk);
    try {
      while (this.parseOneReply()) {}
    } catch (error) {
      this.failAll(error instanceof Error ? error.message : String(error));
      this.socket.destroy();
    }
  }

  /** Parses one simple reply or one structured chunk; false when more bytes are needed. */
  private parseOneReply(): boolean {
    if (this.replies.length < 4) return false;
    const magic = this.replies.peek(4).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) return this.parseSimple();
    if (magic === STRUCTURED_REPLY_MAGIC) return this.parseStructured();
    throw new NbdProtocolError('ERR_NBD_BAD_MAGIC', `reply magic 0x${magic.toString(16)}`);
  }

  private parseSimple(): boolean {
    if (this.replies.length < SIMPLE_REPLY_BYTES) return false;
    const header = this.replies.peek(SIMPLE_REPLY_BYTES);
    const cookie = header.readBigUInt64BE(8);
    const pending = this.pending.get(cookie);
    if (!pending) throw new NbdProtocolError('ERR_NBD_BAD_COOKIE', 'reply to no request');
    const errno = header.readUInt32BE(4);
    const dataBytes = pending.type === Cmd.Read && errno === 0 ? pending.length : 0;
    if (this.replies.length < SIMPLE_REPLY_BYTES + dataBytes) return false;
    this.replies.skip(SIMPLE_REPLY_BYTES);
    if (dataBytes > 0) this.replies.take(dataBytes).copy(pending.data as Buffer);
    pending.errno = errno;
    this.settle(cookie, pending);
    return true;
  }

  private parseStructured(): boolean {
    if (this.replies.length < STRUCTURED_HEADER_BYTES) return false;
    const header = this.replies.peek(STRUCTURED_HEADER_BYTES);
    const payloadBytes = header.readUInt32BE(16);
    if (payloadBytes > PAYLOAD_BYTES_MAX + 1024) {
      throw new NbdProtocolError('ERR_NBD_PAYLOAD_TOO_LARGE', 'reply chunk too large');
    }
    if (this.replies.length < STRUCTURED_HEADER_BYTES + payloadBytes) return false;
    const cookie = header.readBigUInt64BE(8);
    const type = header.readUInt16BE(6);
    const isDone = (header.readUInt16BE(4) & ReplyFlag.Done) !== 0;
    this.replies.skip(STRUCTURED_HEADER_BYTES);
    const payload = this.replies.take(payloadBytes);
    const pending = this.pending.get(cookie);
    if (!pending) throw new NbdProtocolError('ERR_NBD_BAD_COOKIE', 'reply chunk to no request');
    this.applyChunk(pending, type, payload);
    if (isDone) this.settle(cookie, pending);
    return true;
  }

  private applyChunk(pending: Pending, type: number, payload: Buffer): void {
    switch (type) {
      case ReplyType.None:
        return;
      case ReplyType.OffsetData: {
        const at = readUint64(payload, 0, 'chunk offset') - pending.offset;
        const data = payload.subarray(8);
        if (pending.data === null || at < 0 || at + data.length > pending.length) {
          throw new NbdProtocolError('ERR_NBD_BAD_CHUNK', 'data chunk outside the request');
        }
        data.copy(pending.data, at);
        return;
      }
      case ReplyType.OffsetHole: {
        const at = readUint64(payload, 0, 'chunk offset') - pending.offset;
        const length = payload.readUInt32BE(8);
        if (pending.data === null || at < 0 || at + length > pending.length) {
          throw new NbdProtocolError('ERR_NBD_BAD_CHUNK', 'hole chunk outside the request');
        }
        pending.data.fill(0, at, at + length);
        return;
      }
      case ReplyType.BlockStatus: {
        let offset = pending.offset + pending.extents.reduce((sum, e) => sum + e.length, 0);
        for (let at = 4; at + 8 <= payload.length; at += 8) {
          const length = payload.readUInt32BE(at);
          const flags = payload.readUInt32BE(at + 4);
          const kind =
            (flags & StateFlag.Hole) !== 0
              ? 'hole'
              : (flags & StateFlag.Zero) !== 0
                ? 'zero'
                : 'data';
          pending.extents.push({ offset, length, kind });
          offset += length;
        }
        return;
      }
      default:
        if ((type & 0x8000) !== 0 && payload.length >= 6) {
          pending.errno = payload.readUInt32BE(0);
          pending.errorMessage = payload.toString('utf8', 6, 6 + payload.readUInt16BE(4));
          return;
        }
        throw new NbdProtocolError('ERR_NBD_BAD_CHUNK', `unknown reply chunk type ${type}`);
    }
  }

  private settle(cookie: bigint, pending: Pending): void {
    this.pending.delete(cookie);
    if (pending.errno !== 0) {
      const code = ERRNO_NAMES.get(pending.errno) ?? BlockErrorCode.EIO;
      const detail = pending.errorMessage === '' ? '' : `: ${pending.errorMessage}`;
      pending.reject(new BlockError(code, `NBD server replied ${code}${detail}`));
    } else if (pending.type === Cmd.Read) {
      pending.resolve(pending.data as Buffer);
    } else if (pending.type === Cmd.BlockStatus) {
      pending.resolve(pending.extents);
    } else {
      pending.resolve(undefined);
    }
  }

  private failAll(reason: string): void {
    for (const [cookie, pending] of this.pending) {
      this.pending.delete(cookie);
      pending.reject(new BlockError(BlockErrorCode.EIO, reason));
    }
  }
}

// --- Handshake, client side ----------------------------------------------------------------------

interface Negotiated {
  size: number;
  flags: number;
  isStructured: boolean;
  isBaseAllocation: boolean;
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

function openSocket(options: NbdClientOptions): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      options.path !== undefined
        ? connect({ path: options.path })
        : connect({
            host: options.host ?? '127.0.0.1',
            port: options.port ?? 10809,
            noDelay: true,
          });
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

/** Buffers socket bytes during the handshake and hands out exact-length reads. */
class SocketReader {
  readonly queue = new ByteQueue();
  private waiter: (() => void) | null = null;
  private failure: Error | null = null;
  private readonly onData = (chunk: Buffer): void => {
    this.queue.push(chunk);
    this.waiter?.();
  };
  private readonly onEnd = (error?: Error): void => {
    // Under TLS 1.3 a server that refuses our certificate says so only after our side of the
    // handshake is done: the alert arrives here, and its text is the useful part.
    const detail = error instanceof Error ? `: ${error.message}` : '';
    this.failure ??= new NbdProtocolError(
      'ERR_NBD_CLOSED',
      `server closed the connection during the handshake${detail}`,
    );
    this.waiter?.();
  };

  constructor(private readonly socket: Socket) {
    socket.on('data', this.onData);
    socket.on('close', this.onEnd);
    socket.on('error', this.onEnd);
  }

  async read(count: number): Promise<Buffer> {
    while (this.queue.length < count) {
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => {
        this.waiter = resolve;
      });
      this.waiter = null;
    }
    return this.queue.take(count);
  }

  detach(): void {
    this.socket.off('data', this.onData);
    this.socket.off('close', this.onEnd);
    this.socket.off('error', this.onEnd);
  }
}

/** The server's greeting and our client flags ("Fixed newstyle negotiation"). */
async function greet(socket: Socket, reader: SocketReader): Promise<void> {
  const greeting = await reader.read(18);
  if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
    throw new NbdProtocolError('ERR_NBD_BAD_MAGIC', 'not a fixed-newstyle NBD server');
  }
  const serverFlags = greeting.readUInt16BE(16);
  if ((serverFlags & HandshakeFlag.FixedNewstyle) === 0) {
    throw new NbdProtocolError('ERR_NBD_OLD_SERVER', 'server does not speak fixed newstyle');
  }
  const clientFlags = Buffer.allocUnsafe(4);
  clientFlags.writeUInt32BE(
    ClientFlag.FixedNewstyle | (serverFlags & HandshakeFlag.NoZeroes ? ClientFlag.NoZeroes : 0),
  );
  socket.write(clientFlags);
}

/**
 * NBD_OPT_STARTTLS, no data. Anything but ACK means no TLS, and a client that asked for TLS
 * must not go on in plain text ("Client-side requirements", downgrade attacks). The server
 * sends nothing after the ACK until the TLS handshake, so leftover bytes are a protocol error.
 */
async function sendStartTls(socket: Socket, reader: SocketReader): Promise<void> {
  const replies = await sendOption(socket, reader, Opt.StartTls, Buffer.alloc(0));
  const last = replies.at(-1);
  if (last?.type !== Rep.Ack) {
    const message = last?.data.toString('utf8') ?? '';
    throw new NbdProtocolError(
      'ERR_NBD_TLS_REFUSED',
      `the NBD server refused TLS (reply type 0x${(last?.type ?? 0).toString(16)}` +
        `${message === '' ? '' : `: ${message}`}); not going on without it`,
    );
  }
  if (reader.queue.length > 0) {
    throw new NbdProtocolError('ERR_NBD_BAD_REPLY', 'server sent bytes after its STARTTLS reply');
  }
}

async function negotiate(
  socket: Socket,
  reader: SocketReader,
  options: NbdClientOptions,
): Promise<Negotiated> {
  const result: Negotiated = {
    size: 0,
    flags: 0,
    isStructured: false,
    isBaseAllocation: false,
    minimumBytes: 1,
    preferredBytes: 4096,
    maximumBytes: PAYLOAD_BYTES_MAX,
  };
  if (options.wantStructured ?? true) {
    const replies = await sendOption(socket, reader, Opt.StructuredReply, Buffer.alloc(0));
    result.isStructured = replies.at(-1)?.type === Rep.Ack;
  }
  if (result.isStructured) {
    const query = encodeLengthPrefixed(BASE_ALLOCATION);
    const count = Buffer.allocUnsafe(4);
    count.writeUInt32BE(1);
    const data = Buffer.concat([encodeLengthPrefixed(options.exportName), count, query]);
    const replies = await sendOption(socket, reader, Opt.SetMetaContext, data);
    result.isBaseAllocation = replies.some((reply) => reply.type === Rep.MetaContext);
  }
  const requests = Buffer.allocUnsafe(4);
  requests.writeUInt16BE(1, 0);
  requests.writeUInt16BE(Info.BlockSize, 2);
  const replies = await sendOption(
    socket,
    reader,
    Opt.Go,
    Buffer.concat([encodeLengthPrefixed(options.exportName), requests]),
  );
  const last = replies.at(-1);
  if (last?.type !== Rep.Ack) {
    const message = last?.data.toString('utf8') ?? '';
    throw new BlockError(
      BlockErrorCode.EINVAL,
      `NBD server refused export "${options.exportName}": ${message}`,
    );
  }
  for (const reply of replies) {
    if (reply.type !== Rep.Info || reply.data.length < 2) continue;
    const infoType = reply.data.readUInt16BE(0);
    if (infoType === Info.Export) {
      result.size = readUint64(reply.data, 2, 'export size');
      result.flags = reply.data.readUInt16BE(10);
    } else if (infoType === Info.BlockSize) {
      result.minimumBytes = reply.data.readUInt32BE(2);
      result.preferredBytes = reply.data.readUInt32BE(6);
      result.maximumBytes = Math.min(PAYLOAD_BYTES_MAX, reply.data.readUInt32BE(10));
    }
  }
  return result;
}

/** Sends one option and collects its replies up to the final ACK or error. */
async function sendOption(
  socket: Socket,
  reader: SocketReader,
  option: number,
  data: Buffer,
): Promise<{ type: number; data: Buffer }[]> {
  socket.write(Buffer.concat([encodeOptionHeader(option, data.length), data]));
  const replies: { type: number; data: Buffer }[] = [];
  for (;;) {
    const header = decodeOptionReplyHeader(await reader.read(OPTION_REPLY_HEADER_BYTES));
    if (header.option !== option) {
      throw new NbdProtocolError(
        'ERR_NBD_BAD_REPLY',
        `reply for option ${header.option}, sent ${option}`,
      );
    }
    const body = await reader.read(header.length);
    if (header.type === Rep.ErrTlsReqd) {
      // FORCEDTLS ("TLS support"): no option will succeed without TLS.
      throw new NbdProtocolError(
        'ERR_NBD_TLS_REQUIRED',
        'the NBD server requires TLS (NBD_REP_ERR_TLS_REQD): connect with tls: { psk } ' +
          '(a psktool key the server knows) or tls: { x509 } (its CA certificate)',
      );
    }
    replies.push({ type: header.type, data: Buffer.from(body) });
    if (header.type === Rep.Ack || header.type >= 2 ** 31) return replies;
  }
}
