import { NbdProtocolError } from './errors.js';
import {
  IHAVEOPT,
  REPLY_MAGIC_OPTION,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  ReplyFlag,
  ReplyType,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_HEADER_BYTES,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';

/**
 * Pure encoders and decoders for NBD messages: buffers in, values out, and back. No socket, no
 * timer, no state (STYLE.md, "The codec is pure"). Field lists cite doc/proto.md.
 */

const TWO_32 = 2 ** 32;
/** Largest high word whose 64-bit value is still a safe integer (2^53 - 1 >> 32). */
const SAFE_HIGH_MAX = 0x1fffff;

/** Reads a 64-bit big-endian unsigned field; the one place such fields enter as numbers. */
export function readUint64(buf: Buffer, at: number, field: string): number {
  const high = buf.readUInt32BE(at);
  const low = buf.readUInt32BE(at + 4);
  if (high > SAFE_HIGH_MAX) {
    throw new NbdProtocolError('ERR_NBD_FIELD_TOO_LARGE', `${field} exceeds 2^53 bytes`);
  }
  return high * TWO_32 + low;
}

export function writeUint64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32), at);
  buf.writeUInt32BE(value % TWO_32, at + 4);
}

// --- Handshake ---------------------------------------------------------------------------------

/**
 * Client option header ("Option haggling"): IHAVEOPT 64, option 32, length 32. Returns null
 * when the magic is wrong, which ends the connection.
 */
export interface OptionHeader {
  readonly option: number;
  readonly length: number;
}
export const OPTION_HEADER_BYTES = 16;
export function decodeOptionHeader(buf: Buffer): OptionHeader {
  if (buf.readBigUInt64BE(0) !== IHAVEOPT) {
    throw new NbdProtocolError('ERR_NBD_BAD_MAGIC', 'option does not start with IHAVEOPT');
  }
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_HEADER_BYTES);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(length, 12);
  return buf;
}

/** Option reply ("Option reply"): magic 64, option 32, reply type 32, length 32, data. */
export const OPTION_REPLY_HEADER_BYTES = 20;
export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const length = data?.length ?? 0;
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + length);
  buf.writeBigUInt64BE(REPLY_MAGIC_OPTION, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(type, 12);
  buf.writeUInt32BE(length, 16);
  data?.copy(buf, OPTION_REPLY_HEADER_BYTES);
  return buf;
}

export interface OptionReplyHeader {
  readonly option: number;
  readonly type: number;
  readonly length: number;
}
export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader {
  if (buf.readBigUInt64BE(0) !== REPLY_MAGIC_OPTION) {
    throw new NbdProtocolError('ERR_NBD_BAD_MAGIC', 'option reply has a bad magic');
  }
  return { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

/** A 32-bit length followed by that many UTF-8 bytes (names in LIST, INFO, GO, META_CONTEXT). */
export function encodeLengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(4 + bytes.length);
  buf.writeUInt32BE(bytes.length, 0);
  bytes.copy(buf, 4);
  return buf;
}

// --- Transmission ------------------------------------------------------------------------------

/** Request ("Request message"): magic 32, flags 16, type 16, cookie 64, offset 64, length 32. */
export interface RequestHeader {
  readonly flags: number;
  readonly type: number;
  /** Opaque to the server; kept as the 8 raw bytes it is echoed back with. */
  readonly cookie: Buffer;
  readonly offset: number;
  readonly length: number;
}
export function decodeRequestHeader(buf: Buffer): RequestHeader {
  if (buf.readUInt32BE(0) !== REQUEST_MAGIC) {
    throw new NbdProtocolError(
      'ERR_NBD_BAD_MAGIC',
      `request magic 0x${buf.readUInt32BE(0).toString(16)} is not 0x${REQUEST_MAGIC.toString(16)}`,
    );
  }
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: buf.subarray(8, 16),
    offset: readUint64(buf, 16, 'request offset'),
    length: buf.readUInt32BE(24),
  };
}

export function encodeRequestHeader(
  type: number,
  flags: number,
  cookie: bigint,
  offset: number,
  length: number,
): Buffer {
  const buf = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  buf.writeUInt32BE(REQUEST_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeBigUInt64BE(cookie, 8);
  writeUint64(buf, offset, 16);
  buf.writeUInt32BE(length, 24);
  return buf;
}

/** Simple reply ("Simple reply message"): magic 32, error 32, cookie 64. */
export function encodeSimpleReply(cookie: Buffer, error: number): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error, 4);
  cookie.copy(buf, 8);
  return buf;
}

/**
 * Structured reply chunk header ("Structured reply chunk message"): magic 32, flags 16, type 16,
 * cookie 64, length 32; `extraBytes` of room after it for the fixed part of the payload.
 */
export function encodeStructuredHeader(
  cookie: Buffer,
  flags: number,
  type: number,
  payloadBytes: number,
  extraBytes = 0,
): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_HEADER_BYTES + extraBytes);
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  cookie.copy(buf, 8);
  buf.writeUInt32BE(payloadBytes, 16);
  return buf;
}

/** `NBD_REPLY_TYPE_OFFSET_DATA` header: chunk header + offset 64; the data follows unsent. */
export function encodeOffsetDataHeader(
  cookie: Buffer,
  offset: number,
  dataBytes: number,
  isDone: boolean,
): Buffer {
  const buf = encodeStructuredHeader(
    cookie,
    isDone ? ReplyFlag.Done : 0,
    ReplyType.OffsetData,
    8 + dataBytes,
    8,
  );
  writeUint64(buf, offset, STRUCTURED_HEADER_BYTES);
  return buf;
}

/** `NBD_REPLY_TYPE_ERROR`: error 32, message length 16, message; always the last chunk here. */
export function encodeErrorChunk(cookie: Buffer, error: number, message: string): Buffer {
  const text = Buffer.from(message.slice(0, 200), 'utf8');
  const buf = encodeStructuredHeader(
    cookie,
    ReplyFlag.Done,
    ReplyType.Error,
    6 + text.length,
    6 + text.length,
  );
  buf.writeUInt32BE(error, STRUCTURED_HEADER_BYTES);
  buf.writeUInt16BE(text.length, STRUCTURED_HEADER_BYTES + 4);
  text.copy(buf, STRUCTURED_HEADER_BYTES + 6);
  return buf;
}

/** `NBD_REPLY_TYPE_BLOCK_STATUS`: context id 32, then per extent length 32 and flags 32. */
export function encodeBlockStatusChunk(
  cookie: Buffer,
  contextId: number,
  extents: readonly { length: number; flags: number }[],
  isDone: boolean,
): Buffer {
  const payload = 4 + extents.length * 8;
  const buf = encodeStructuredHeader(
    cookie,
    isDone ? ReplyFlag.Done : 0,
    ReplyType.BlockStatus,
    payload,
    payload,
  );
  let at = STRUCTURED_HEADER_BYTES;
  buf.writeUInt32BE(contextId, at);
  at += 4;
  for (const extent of extents) {
    buf.writeUInt32BE(extent.length, at);
    buf.writeUInt32BE(extent.flags, at + 4);
    at += 8;
  }
  return buf;
}

/** `NBD_REPLY_TYPE_NONE` with DONE: ends a structured reply that had no final chunk. */
export function encodeDoneChunk(cookie: Buffer): Buffer {
  return encodeStructuredHeader(cookie, ReplyFlag.Done, ReplyType.None, 0);
}
