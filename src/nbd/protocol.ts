/**
 * Every wire constant of the NBD protocol that Ferry speaks, named as the spec names them
 * (NetworkBlockDevice/nbd, doc/proto.md). Nothing here does anything: the codec, handshake and
 * session import these names so each rule can be traced back to the spec.
 */

/** "Newstyle negotiation": the first 8 bytes the server sends, then `IHAVEOPT`. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** Prefix of every client option in the haggling phase ("Option haggling"). */
export const IHAVEOPT = 0x49484156454f5054n;
/** Prefix of every server option reply. */
export const REPLY_MAGIC_OPTION = 0x3e889045565a9n;

/** Handshake flags, sent by the server after the magics (16 bits). */
export const HandshakeFlag = {
  FixedNewstyle: 1 << 0,
  NoZeroes: 1 << 1,
} as const;

/** Client flags, the client's 32-bit answer to the handshake flags. */
export const ClientFlag = {
  FixedNewstyle: 1 << 0,
  NoZeroes: 1 << 1,
} as const;
export const CLIENT_FLAGS_KNOWN = ClientFlag.FixedNewstyle | ClientFlag.NoZeroes;

/** Option types ("Option types"). */
export const Opt = {
  ExportName: 1,
  Abort: 2,
  List: 3,
  PeekExport: 4,
  StartTls: 5,
  Info: 6,
  Go: 7,
  StructuredReply: 8,
  ListMetaContext: 9,
  SetMetaContext: 10,
  ExtendedHeaders: 11,
} as const;

/** Option reply types ("Option reply types"). Errors have bit 31 set. */
const REP_FLAG_ERROR = 2 ** 31;
export const Rep = {
  Ack: 1,
  Server: 2,
  Info: 3,
  MetaContext: 4,
  ErrUnsup: REP_FLAG_ERROR + 1,
  ErrPolicy: REP_FLAG_ERROR + 2,
  ErrInvalid: REP_FLAG_ERROR + 3,
  ErrPlatform: REP_FLAG_ERROR + 4,
  ErrTlsReqd: REP_FLAG_ERROR + 5,
  ErrUnknown: REP_FLAG_ERROR + 6,
  ErrShutdown: REP_FLAG_ERROR + 7,
  ErrBlockSizeReqd: REP_FLAG_ERROR + 8,
  ErrTooBig: REP_FLAG_ERROR + 9,
} as const;

/** Information types inside `NBD_REP_INFO` ("Option reply types", NBD_REP_INFO). */
export const Info = {
  Export: 0,
  Name: 1,
  Description: 2,
  BlockSize: 3,
} as const;

/** Transmission flags (16 bits), sent with the export size. */
export const TransmitFlag = {
  HasFlags: 1 << 0,
  ReadOnly: 1 << 1,
  SendFlush: 1 << 2,
  SendFua: 1 << 3,
  Rotational: 1 << 4,
  SendTrim: 1 << 5,
  SendWriteZeroes: 1 << 6,
  SendDf: 1 << 7,
  CanMultiConn: 1 << 8,
  SendResize: 1 << 9,
  SendCache: 1 << 10,
  SendFastZero: 1 << 11,
} as const;

/** Request magic ("Transmission phase", "Request message"). */
export const REQUEST_MAGIC = 0x25609513;
/** Simple reply magic. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Structured reply chunk magic. */
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Request header: magic 32, flags 16, type 16, cookie 64, offset 64, length 32. */
export const REQUEST_HEADER_BYTES = 28;
/** Simple reply: magic 32, error 32, cookie 64. */
export const SIMPLE_REPLY_BYTES = 16;
/** Structured reply chunk header: magic 32, flags 16, type 16, cookie 64, length 32. */
export const STRUCTURED_HEADER_BYTES = 20;

/** Command types ("Request types"). */
export const Cmd = {
  Read: 0,
  Write: 1,
  Disc: 2,
  Flush: 3,
  Trim: 4,
  Cache: 5,
  WriteZeroes: 6,
  BlockStatus: 7,
  Resize: 8,
} as const;
export type Cmd = (typeof Cmd)[keyof typeof Cmd];

/** Command flags ("Command flags"). */
export const CmdFlag = {
  Fua: 1 << 0,
  NoHole: 1 << 1,
  Df: 1 << 2,
  ReqOne: 1 << 3,
  FastZero: 1 << 4,
} as const;

/** Structured reply flags and chunk types ("Structured reply chunk message types"). */
export const ReplyFlag = { Done: 1 << 0 } as const;
export const ReplyType = {
  None: 0,
  OffsetData: 1,
  OffsetHole: 2,
  BlockStatus: 5,
  Error: 2 ** 15 + 1,
  ErrorOffset: 2 ** 15 + 2,
} as const;

/** Error values ("Error values"): errno numbers as Linux has them. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type ErrnoName = keyof typeof Errno;

/** `base:allocation` metadata context ("Metadata querying", "Baseline meta context"). */
export const BASE_ALLOCATION = 'base:allocation';
export const StateFlag = { Hole: 1 << 0, Zero: 1 << 1 } as const;

/**
 * Limits. The spec caps strings at 4096 bytes ("Option haggling") and lets a server refuse
 * payloads over 32 MiB ("Block size constraints"); options carry at most a few names, so 64 KiB
 * bounds what one option may make us buffer.
 */
export const STRING_BYTES_MAX = 4096;
export const PAYLOAD_BYTES_MAX = 32 * 1024 * 1024;
export const OPTION_BYTES_MAX = 64 * 1024;
/** Bytes of zeroes the server sends after `NBD_OPT_EXPORT_NAME` unless `NO_ZEROES`. */
export const EXPORT_NAME_PADDING_BYTES = 124;
