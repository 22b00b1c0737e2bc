import type { BlockDevice } from '../block/device.js';
import { encodeLengthPrefixed, encodeOptionReply, writeUint64 } from './codec.js';
import { type ExportAccess, type ExportProvider, type NbdExport, PLAIN_ACCESS } from './exports.js';
import {
  BASE_ALLOCATION,
  EXPORT_NAME_PADDING_BYTES,
  Info,
  Opt,
  PAYLOAD_BYTES_MAX,
  Rep,
  STRING_BYTES_MAX,
  TransmitFlag,
} from './protocol.js';

/**
 * The option-haggling phase of the fixed newstyle handshake, server side (doc/proto.md,
 * "Option haggling"). `handleOption` takes one whole option and returns the replies to send and
 * what the connection does next; the session owns the socket. Kept free of I/O so each option
 * has golden-byte tests.
 */

/** The one metadata context we serve; its id is fixed for the life of the server. */
export const BASE_ALLOCATION_ID = 1;

export interface NegotiatedState {
  /** NBD_FLAG_C_NO_ZEROES: skip the 124 bytes of padding after NBD_OPT_EXPORT_NAME. */
  isNoZeroes: boolean;
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  isStructured: boolean;
  /** Export that NBD_OPT_SET_META_CONTEXT selected contexts for, and whether base:allocation is one. */
  metaExportName: string | null;
  isBaseAllocation: boolean;
  /**
   * How this connection treats TLS, fixed for its life ("TLS support", "Server-side
   * requirements": the mode must not change within one TCP connection). `off` is NOTLS,
   * `allow` is SELECTIVETLS (the provider decides which exports need it), `require` is FORCEDTLS.
   */
  readonly tlsMode: HandshakeTlsMode;
  /** What the connection has proved so far; the session replaces it once TLS is up. */
  access: ExportAccess;
}

export type HandshakeTlsMode = 'off' | 'allow' | 'require';

export function newNegotiatedState(
  isNoZeroes: boolean,
  tlsMode: HandshakeTlsMode = 'off',
  access: ExportAccess = PLAIN_ACCESS,
): NegotiatedState {
  return {
    isNoZeroes,
    isStructured: false,
    metaExportName: null,
    isBaseAllocation: false,
    tlsMode,
    access,
  };
}

export type OptionOutcome =
  | { readonly next: 'options'; readonly replies: Buffer[] }
  | { readonly next: 'transmission'; readonly replies: Buffer[]; readonly export: NbdExport }
  /** Send the replies (the ACK) in clear, then run the TLS handshake before reading anything. */
  | { readonly next: 'starttls'; readonly replies: Buffer[] }
  | { readonly next: 'close'; readonly replies: Buffer[]; readonly reason: string };

/**
 * The 16 transmission flags for `device` on a connection whose negotiation so far is `state`.
 * NBD_FLAG_SEND_DF is set only once structured replies are negotiated: the spec ("Transmission
 * flags", bit 7) says the server MUST leave it clear otherwise, since DF only means something
 * for a read answered in chunks.
 */
export function transmissionFlags(device: BlockDevice, state: NegotiatedState): number {
  const { caps } = device;
  let flags = TransmitFlag.HasFlags | TransmitFlag.SendFlush | TransmitFlag.SendCache;
  if (state.isStructured) flags |= TransmitFlag.SendDf;
  if (caps.isMultiConnSafe) flags |= TransmitFlag.CanMultiConn;
  // A read-only export advertises no way to change it, as qemu-nbd -r and nbdkit -r do.
  if (caps.isReadOnly) return flags | TransmitFlag.ReadOnly;
  flags |= TransmitFlag.SendWriteZeroes | TransmitFlag.SendFastZero;
  if (caps.fua !== 'none') flags |= TransmitFlag.SendFua;
  if (caps.trim !== 'none') flags |= TransmitFlag.SendTrim;
  return flags;
}

export function handleOption(
  state: NegotiatedState,
  exports: ExportProvider,
  option: number,
  data: Buffer,
): OptionOutcome {
  if (state.tlsMode === 'require' && !state.access.isTls) {
    return handleOptBeforeTls(state, option, data);
  }
  switch (option) {
    case Opt.StartTls:
      return handleOptStartTls(state, data);
    case Opt.ExportName:
      return handleOptExportName(state, exports, data);
    case Opt.Abort:
      return handleOptAbort();
    case Opt.List:
      return handleOptList(state, exports, data);
    case Opt.Info:
    case Opt.Go:
      return handleOptInfoOrGo(state, exports, option, data);
    case Opt.StructuredReply:
      return handleOptStructuredReply(state, data);
    case Opt.ListMetaContext:
    case Opt.SetMetaContext:
      return handleOptMetaContext(state, exports, option, data);
    default:
      return stay(errorReply(option, Rep.ErrUnsup, `option ${option} is not supported`));
  }
}

/**
 * FORCEDTLS before the upgrade ("TLS support", "FORCEDTLS mode"): STARTTLS and ABORT are
 * served; NBD_OPT_EXPORT_NAME cannot carry an error, so it ends the session; every other
 * option gets NBD_REP_ERR_TLS_REQD, whose text tells a person what to do.
 */
function handleOptBeforeTls(state: NegotiatedState, option: number, data: Buffer): OptionOutcome {
  switch (option) {
    case Opt.StartTls:
      return handleOptStartTls(state, data);
    case Opt.Abort:
      return handleOptAbort();
    case Opt.ExportName:
      return { next: 'close', replies: [], reason: 'NBD_OPT_EXPORT_NAME before STARTTLS' };
    default:
      return stay(errorReply(option, Rep.ErrTlsReqd, TLS_REQUIRED_MESSAGE));
  }
}

const TLS_REQUIRED_MESSAGE =
  'this server requires TLS: connect with TLS-PSK (a psktool key) or X.509 certificates';

/**
 * NBD_OPT_STARTTLS: no data. Without TLS configured the spec lets us answer ERR_POLICY ("NOTLS
 * mode"); with it, ACK once, and ERR_INVALID to a second request ("FORCEDTLS mode": a session
 * already under TLS must not start it again).
 */
function handleOptStartTls(state: NegotiatedState, data: Buffer): OptionOutcome {
  if (state.tlsMode === 'off') {
    return stay(errorReply(Opt.StartTls, Rep.ErrPolicy, 'TLS is not configured on this server'));
  }
  if (data.length !== 0) {
    return stay(errorReply(Opt.StartTls, Rep.ErrInvalid, 'NBD_OPT_STARTTLS takes no data'));
  }
  if (state.access.isTls) {
    return stay(errorReply(Opt.StartTls, Rep.ErrInvalid, 'TLS is already running'));
  }
  return { next: 'starttls', replies: [encodeOptionReply(Opt.StartTls, Rep.Ack)] };
}

/** NBD_OPT_ABORT: the server MUST reply ACK; the client then drops the connection. */
function handleOptAbort(): OptionOutcome {
  return {
    next: 'close',
    replies: [encodeOptionReply(Opt.Abort, Rep.Ack)],
    reason: 'client aborted',
  };
}

function stay(...replies: Buffer[]): OptionOutcome {
  return { next: 'options', replies };
}

function errorReply(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message, 'utf8'));
}

/**
 * NBD_OPT_EXPORT_NAME: data is the name; the reply is size 64, flags 16 and (unless NO_ZEROES)
 * 124 zero bytes, with no option-reply header. An unknown name can only be refused by closing.
 */
function handleOptExportName(
  state: NegotiatedState,
  exports: ExportProvider,
  data: Buffer,
): OptionOutcome {
  const name = data.toString('utf8');
  const found = exports.lookup(name, state.access);
  if (!found) return { next: 'close', replies: [], reason: `no export named "${name}"` };
  const padding = state.isNoZeroes ? 0 : EXPORT_NAME_PADDING_BYTES;
  const reply = Buffer.alloc(10 + padding);
  writeUint64(reply, found.device.size, 0);
  reply.writeUInt16BE(transmissionFlags(found.device, state), 8);
  dropMetaIfOtherExport(state, name);
  return { next: 'transmission', replies: [reply], export: found };
}

/** NBD_OPT_LIST: no data; one NBD_REP_SERVER (name length 32, name, description) per export. */
function handleOptList(
  state: NegotiatedState,
  exports: ExportProvider,
  data: Buffer,
): OptionOutcome {
  if (data.length !== 0) {
    return stay(errorReply(Opt.List, Rep.ErrInvalid, 'NBD_OPT_LIST takes no data'));
  }
  const replies = exports.list(state.access).map((entry) => {
    const name = encodeLengthPrefixed(entry.name);
    const payload = Buffer.concat([name, Buffer.from(entry.description, 'utf8')]);
    return encodeOptionReply(Opt.List, Rep.Server, payload);
  });
  replies.push(encodeOptionReply(Opt.List, Rep.Ack));
  return stay(...replies);
}

/**
 * NBD_OPT_INFO / NBD_OPT_GO: name length 32, name, request count 16, info types 16 each. Replies
 * NBD_INFO_EXPORT always, then name, description and block sizes (sent unasked too, which the
 * spec allows, so clients learn our 32 MiB payload limit), then ACK. GO enters transmission.
 */
function handleOptInfoOrGo(
  state: NegotiatedState,
  exports: ExportProvider,
  option: number,
  data: Buffer,
): OptionOutcome {
  const parsed = parseInfoRequest(data);
  if (typeof parsed === 'string') return stay(errorReply(option, Rep.ErrInvalid, parsed));
  const found = exports.lookup(parsed.name, state.access);
  if (!found) {
    const hint =
      parsed.name === '' ? 'no default export: name a disk' : `no export named "${parsed.name}"`;
    return stay(errorReply(option, Rep.ErrUnknown, hint));
  }
  const { device } = found;
  const exportInfo = Buffer.allocUnsafe(12);
  exportInfo.writeUInt16BE(Info.Export, 0);
  writeUint64(exportInfo, device.size, 2);
  exportInfo.writeUInt16BE(transmissionFlags(device, state), 10);
  const replies = [encodeOptionReply(option, Rep.Info, exportInfo)];
  const infoString = (type: number, text: string): Buffer => {
    const bytes = Buffer.from(text, 'utf8');
    const payload = Buffer.allocUnsafe(2 + bytes.length);
    payload.writeUInt16BE(type, 0);
    bytes.copy(payload, 2);
    return encodeOptionReply(option, Rep.Info, payload);
  };
  if (parsed.requests.includes(Info.Name)) replies.push(infoString(Info.Name, found.name));
  if (parsed.requests.includes(Info.Description) && found.description !== '') {
    replies.push(infoString(Info.Description, found.description));
  }
  const blockSize = Buffer.allocUnsafe(14);
  blockSize.writeUInt16BE(Info.BlockSize, 0);
  blockSize.writeUInt32BE(device.limits.minimumBytes, 2);
  blockSize.writeUInt32BE(Math.max(device.limits.minimumBytes, device.limits.preferredBytes), 6);
  blockSize.writeUInt32BE(Math.min(PAYLOAD_BYTES_MAX, device.limits.maximumBytes), 10);
  replies.push(encodeOptionReply(option, Rep.Info, blockSize));
  replies.push(encodeOptionReply(option, Rep.Ack));
  if (option === Opt.Info) return stay(...replies);
  dropMetaIfOtherExport(state, found.name);
  return { next: 'transmission', replies, export: found };
}

function parseInfoRequest(data: Buffer): { name: string; requests: number[] } | string {
  if (data.length < 6) return 'INFO/GO data is shorter than its fixed fields';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > STRING_BYTES_MAX) return 'export name is longer than 4096 bytes';
  if (data.length < 4 + nameBytes + 2) return 'INFO/GO name length runs past the data';
  const name = data.toString('utf8', 4, 4 + nameBytes);
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 4 + nameBytes + 2 + count * 2) {
    return 'INFO/GO request count does not match the data length';
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i += 1) requests.push(data.readUInt16BE(4 + nameBytes + 2 + i * 2));
  return { name, requests };
}

/** NBD_OPT_STRUCTURED_REPLY: no data; from now on reads and block status use chunks. */
function handleOptStructuredReply(state: NegotiatedState, data: Buffer): OptionOutcome {
  if (data.length !== 0) {
    return stay(errorReply(Opt.StructuredReply, Rep.ErrInvalid, 'takes no data'));
  }
  state.isStructured = true;
  return stay(encodeOptionReply(Opt.StructuredReply, Rep.Ack));
}

/**
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT: export name length 32, name, query
 * count 32, then per query length 32 and string. We know one context, `base:allocation`; a LIST
 * with no queries or with the query `base:` names it. SET replaces the selection and needs
 * structured replies first ("Metadata querying").
 */
function handleOptMetaContext(
  state: NegotiatedState,
  exports: ExportProvider,
  option: number,
  data: Buffer,
): OptionOutcome {
  const isSet = option === Opt.SetMetaContext;
  if (isSet && !state.isStructured) {
    return stay(errorReply(option, Rep.ErrInvalid, 'negotiate structured replies first'));
  }
  const parsed = parseMetaContextRequest(data);
  if (typeof parsed === 'string') return stay(errorReply(option, Rep.ErrInvalid, parsed));
  if (!exports.lookup(parsed.name, state.access)) {
    return stay(errorReply(option, Rep.ErrUnknown, `no export named "${parsed.name}"`));
  }
  const matches =
    (!isSet && parsed.queries.length === 0) ||
    parsed.queries.some((query) => query === BASE_ALLOCATION || (!isSet && query === 'base:'));
  if (isSet) {
    state.metaExportName = parsed.name;
    state.isBaseAllocation = matches;
  }
  const replies: Buffer[] = [];
  if (matches) {
    const context = Buffer.from(BASE_ALLOCATION, 'utf8');
    const payload = Buffer.allocUnsafe(4 + context.length);
    payload.writeUInt32BE(isSet ? BASE_ALLOCATION_ID : 0, 0);
    context.copy(payload, 4);
    replies.push(encodeOptionReply(option, Rep.MetaContext, payload));
  }
  replies.push(encodeOptionReply(option, Rep.Ack));
  return stay(...replies);
}

function parseMetaContextRequest(data: Buffer): { name: string; queries: string[] } | string {
  if (data.length < 8) return 'meta context data is shorter than its fixed fields';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > STRING_BYTES_MAX || data.length < 4 + nameBytes + 4) {
    return 'meta context export name runs past the data';
  }
  const name = data.toString('utf8', 4, 4 + nameBytes);
  const count = data.readUInt32BE(4 + nameBytes);
  const queries: string[] = [];
  let at = 8 + nameBytes;
  for (let i = 0; i < count; i += 1) {
    if (at + 4 > data.length) return 'meta context query count runs past the data';
    const queryBytes = data.readUInt32BE(at);
    if (queryBytes > STRING_BYTES_MAX || at + 4 + queryBytes > data.length) {
      return 'meta context query runs past the data';
    }
    queries.push(data.toString('utf8', at + 4, at + 4 + queryBytes));
    at += 4 + queryBytes;
  }
  if (at !== data.length) return 'meta context data has trailing bytes';
  return { name, queries };
}

/** Contexts selected for one export do not carry over to another ("NBD_OPT_SET_META_CONTEXT"). */
function dropMetaIfOtherExport(state: NegotiatedState, name: string): void {
  if (state.metaExportName !== null && state.metaExportName !== name) {
    state.metaExportName = null;
    state.isBaseAllocation = false;
  }
}
