import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryDevice } from '../../src/block/memory.js';
import { encodeLengthPrefixed } from '../../src/nbd/codec.js';
import type { ExportProvider, NbdExport } from '../../src/nbd/exports.js';
import { handleOption, newNegotiatedState, transmissionFlags } from '../../src/nbd/handshake.js';
import { Info, Opt, Rep, TransmitFlag } from '../../src/nbd/protocol.js';

const vm1: NbdExport = { name: 'vm1', description: 'disk one', device: new MemoryDevice(1 << 20) };
const provider: ExportProvider = {
  lookup: (name) => (name === 'vm1' ? vm1 : undefined),
  list: () => [vm1],
};

/** Golden option reply: magic 0x3e889045565a9, option, type, length, data. */
function golden(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.from('0003e889045565a9', 'hex');
  const fields = Buffer.alloc(12);
  fields.writeUInt32BE(option, 0);
  fields.writeUInt32BE(type, 4);
  fields.writeUInt32BE(data.length, 8);
  return Buffer.concat([head, fields, data]);
}

function goData(name: string, infos: number[]): Buffer {
  const count = Buffer.alloc(2 + infos.length * 2);
  count.writeUInt16BE(infos.length, 0);
  for (const [i, info] of infos.entries()) count.writeUInt16BE(info, 2 + i * 2);
  return Buffer.concat([encodeLengthPrefixed(name), count]);
}

function metaData(name: string, queries: string[]): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  return Buffer.concat([encodeLengthPrefixed(name), count, ...queries.map(encodeLengthPrefixed)]);
}

test('NBD_OPT_LIST: one SERVER reply per export, then ACK (golden bytes)', () => {
  const outcome = handleOption(newNegotiatedState(true), provider, Opt.List, Buffer.alloc(0));
  assert.equal(outcome.next, 'options');
  const server = Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('vm1disk one')]);
  assert.deepEqual(outcome.replies, [
    golden(Opt.List, Rep.Server, server),
    golden(Opt.List, Rep.Ack),
  ]);
});

/*
 * Transmission flags of export vm1 (a writable MemoryDevice: FUA, trim and zero native, safe for
 * multi-conn), bit by bit from proto.md "Transmission flags":
 *   bit 0  NBD_FLAG_HAS_FLAGS          0x0001  always
 *   bit 2  NBD_FLAG_SEND_FLUSH         0x0004
 *   bit 3  NBD_FLAG_SEND_FUA           0x0008
 *   bit 5  NBD_FLAG_SEND_TRIM          0x0020
 *   bit 6  NBD_FLAG_SEND_WRITE_ZEROES  0x0040
 *   bit 7  NBD_FLAG_SEND_DF            0x0080  only once structured replies are negotiated (MUST)
 *   bit 8  NBD_FLAG_CAN_MULTI_CONN     0x0100
 *   bit 10 NBD_FLAG_SEND_CACHE         0x0400
 *   bit 11 NBD_FLAG_SEND_FAST_ZERO     0x0800
 */
const VM1_FLAGS_PLAIN = '0d6d';
const VM1_FLAGS_STRUCTURED = '0ded';

/** Hex of a whole option reply, field by field ("Fixed newstyle negotiation", option reply). */
function replyHex(option: string, type: string, data: string): string {
  return (
    '0003e889045565a9' + // 64 bits: option reply magic
    option + //            32 bits: the option this answers
    type + //              32 bits: reply type
    (data.length / 2).toString(16).padStart(8, '0') + // 32 bits: length of the data
    data
  );
}

/** The four replies to NBD_OPT_GO for vm1 asking NBD_INFO_NAME, with `flags` as 4 hex digits. */
function goRepliesHex(flags: string): string[] {
  const go = '00000007'; // NBD_OPT_GO
  const info = '00000003'; // NBD_REP_INFO
  return [
    // NBD_INFO_EXPORT: type 16 (0), export size 64 (1 MiB), transmission flags 16.
    replyHex(go, info, '0000' + '0000000000100000' + flags),
    // NBD_INFO_NAME: type 16 (1), then the name "vm1" with no length field.
    replyHex(go, info, '0001' + '766d31'),
    // NBD_INFO_BLOCK_SIZE: type 16 (3), minimum 32 (1), preferred 32 (4096), maximum 32 (32 MiB).
    replyHex(go, info, '0003' + '00000001' + '00001000' + '02000000'),
    // NBD_REP_ACK (1) with no data.
    replyHex(go, '00000001', ''),
  ];
}

test('NBD_OPT_GO without structured replies: INFO_EXPORT without SEND_DF (golden bytes)', () => {
  const outcome = handleOption(
    newNegotiatedState(true),
    provider,
    Opt.Go,
    goData('vm1', [Info.Name]),
  );
  assert.equal(outcome.next, 'transmission');
  assert.deepEqual(
    outcome.replies.map((reply) => reply.toString('hex')),
    goRepliesHex(VM1_FLAGS_PLAIN),
  );
});

test('NBD_OPT_GO after STRUCTURED_REPLY: INFO_EXPORT with SEND_DF (golden bytes)', () => {
  const state = newNegotiatedState(true);
  handleOption(state, provider, Opt.StructuredReply, Buffer.alloc(0));
  const outcome = handleOption(state, provider, Opt.Go, goData('vm1', [Info.Name]));
  assert.deepEqual(
    outcome.replies.map((reply) => reply.toString('hex')),
    goRepliesHex(VM1_FLAGS_STRUCTURED),
  );
});

test('NBD_OPT_INFO carries the same flags: SEND_DF only with structured replies', () => {
  const plain = handleOption(newNegotiatedState(true), provider, Opt.Info, goData('vm1', []));
  // Reply header 20 bytes, then info type 16, size 64: the flags are at byte 30.
  assert.equal(plain.replies[0]!.toString('hex', 30, 32), VM1_FLAGS_PLAIN);
  const state = newNegotiatedState(true);
  handleOption(state, provider, Opt.StructuredReply, Buffer.alloc(0));
  const structured = handleOption(state, provider, Opt.Info, goData('vm1', []));
  assert.equal(structured.replies[0]!.toString('hex', 30, 32), VM1_FLAGS_STRUCTURED);
});

test('NBD_OPT_GO on an unknown export stays in options with ERR_UNKNOWN', () => {
  const outcome = handleOption(newNegotiatedState(true), provider, Opt.Go, goData('nope', []));
  assert.equal(outcome.next, 'options');
  assert.equal(outcome.replies[0]!.readUInt32BE(12), Rep.ErrUnknown);
});

test('NBD_OPT_INFO answers like GO but stays in options', () => {
  const outcome = handleOption(newNegotiatedState(true), provider, Opt.Info, goData('vm1', []));
  assert.equal(outcome.next, 'options');
  assert.equal(outcome.replies.at(-1)!.readUInt32BE(12), Rep.Ack);
});

test('malformed INFO/GO data gets ERR_INVALID', () => {
  const bad = goData('vm1', [1]).subarray(0, 8);
  const outcome = handleOption(newNegotiatedState(true), provider, Opt.Go, bad);
  assert.equal(outcome.replies[0]!.readUInt32BE(12), Rep.ErrInvalid);
});

test('NBD_OPT_EXPORT_NAME: size 64, flags 16, 124 zero bytes unless NO_ZEROES (golden bytes)', () => {
  // proto.md "Newstyle negotiation": no option-reply header; export size 64 bits (1 MiB), then
  // transmission flags 16 bits (no structured replies: no SEND_DF), then 124 reserved zeroes.
  const size = '0000000000100000';
  const padded = handleOption(
    newNegotiatedState(false),
    provider,
    Opt.ExportName,
    Buffer.from('vm1'),
  );
  assert.equal(padded.next, 'transmission');
  assert.equal(padded.replies[0]!.toString('hex'), size + VM1_FLAGS_PLAIN + '00'.repeat(124));
  const bare = handleOption(newNegotiatedState(true), provider, Opt.ExportName, Buffer.from('vm1'));
  assert.equal(bare.replies[0]!.toString('hex'), size + VM1_FLAGS_PLAIN);
  const structured = newNegotiatedState(true);
  handleOption(structured, provider, Opt.StructuredReply, Buffer.alloc(0));
  const withDf = handleOption(structured, provider, Opt.ExportName, Buffer.from('vm1'));
  assert.equal(withDf.replies[0]!.toString('hex'), size + VM1_FLAGS_STRUCTURED);
  const unknown = handleOption(
    newNegotiatedState(true),
    provider,
    Opt.ExportName,
    Buffer.from('x'),
  );
  assert.equal(unknown.next, 'close');
});

test('NBD_OPT_STRUCTURED_REPLY with data is invalid, without data acknowledged', () => {
  const state = newNegotiatedState(true);
  const bad = handleOption(state, provider, Opt.StructuredReply, Buffer.from([1]));
  assert.equal(bad.replies[0]!.readUInt32BE(12), Rep.ErrInvalid);
  assert.equal(state.isStructured, false);
  const good = handleOption(state, provider, Opt.StructuredReply, Buffer.alloc(0));
  assert.deepEqual(good.replies, [golden(Opt.StructuredReply, Rep.Ack)]);
  assert.equal(state.isStructured, true);
});

test('SET_META_CONTEXT needs structured replies, then selects base:allocation with id 1', () => {
  const state = newNegotiatedState(true);
  const early = handleOption(
    state,
    provider,
    Opt.SetMetaContext,
    metaData('vm1', ['base:allocation']),
  );
  assert.equal(early.replies[0]!.readUInt32BE(12), Rep.ErrInvalid);
  handleOption(state, provider, Opt.StructuredReply, Buffer.alloc(0));
  const set = handleOption(
    state,
    provider,
    Opt.SetMetaContext,
    metaData('vm1', ['base:allocation', 'x:y']),
  );
  const context = Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from('base:allocation')]);
  assert.deepEqual(set.replies, [
    golden(Opt.SetMetaContext, Rep.MetaContext, context),
    golden(Opt.SetMetaContext, Rep.Ack),
  ]);
  assert.equal(state.isBaseAllocation, true);
  const none = handleOption(
    state,
    provider,
    Opt.SetMetaContext,
    metaData('vm1', ['qemu:dirty-bitmap:x']),
  );
  assert.deepEqual(none.replies, [golden(Opt.SetMetaContext, Rep.Ack)]);
  assert.equal(state.isBaseAllocation, false);
});

test('LIST_META_CONTEXT with no query or "base:" lists base:allocation with id 0', () => {
  for (const queries of [[], ['base:']]) {
    const outcome = handleOption(
      newNegotiatedState(true),
      provider,
      Opt.ListMetaContext,
      metaData('vm1', queries),
    );
    const context = Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.from('base:allocation')]);
    assert.deepEqual(outcome.replies, [
      golden(Opt.ListMetaContext, Rep.MetaContext, context),
      golden(Opt.ListMetaContext, Rep.Ack),
    ]);
  }
});

test('unknown options get ERR_UNSUP; ABORT acknowledges and closes', () => {
  const unknown = handleOption(newNegotiatedState(true), provider, 4242, Buffer.alloc(0));
  assert.equal(unknown.replies[0]!.readUInt32BE(12), Rep.ErrUnsup);
  const abort = handleOption(newNegotiatedState(true), provider, Opt.Abort, Buffer.alloc(0));
  assert.equal(abort.next, 'close');
  assert.deepEqual(abort.replies, [golden(Opt.Abort, Rep.Ack)]);
});

test('a read-only export advertises READ_ONLY and no write, trim, zero or FUA', () => {
  const ro: NbdExport = {
    name: 'ro',
    description: '',
    device: new MemoryDevice(4096, { isReadOnly: true }),
  };
  const flags = transmissionFlags(ro.device, newNegotiatedState(true));
  assert.ok(flags & TransmitFlag.ReadOnly);
  for (const flag of [
    TransmitFlag.SendTrim,
    TransmitFlag.SendWriteZeroes,
    TransmitFlag.SendFastZero,
    TransmitFlag.SendFua,
  ]) {
    assert.equal(flags & flag, 0);
  }
  assert.ok(
    transmissionFlags(vm1.device, newNegotiatedState(true)) & TransmitFlag.SendTrim,
    'a writable one does advertise trim',
  );
});
