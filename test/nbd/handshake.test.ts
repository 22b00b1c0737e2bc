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

test('NBD_OPT_GO on a known export: INFO_EXPORT, NAME, BLOCK_SIZE, ACK, then transmission', () => {
  const outcome = handleOption(
    newNegotiatedState(true),
    provider,
    Opt.Go,
    goData('vm1', [Info.Name]),
  );
  assert.equal(outcome.next, 'transmission');
  const exportInfo = Buffer.from('0000' + '0000000000100000' + '0000', 'hex');
  const flags = outcome.replies[0]!.readUInt16BE(20 + 10);
  assert.ok(
    flags & TransmitFlag.HasFlags &&
      flags & TransmitFlag.SendFlush &&
      flags & TransmitFlag.CanMultiConn,
  );
  exportInfo.writeUInt16BE(flags, 10);
  assert.deepEqual(outcome.replies[0], golden(Opt.Go, Rep.Info, exportInfo));
  assert.deepEqual(
    outcome.replies[1],
    golden(Opt.Go, Rep.Info, Buffer.concat([Buffer.from([0, 1]), Buffer.from('vm1')])),
  );
  const blockSize = Buffer.from('0003' + '00000001' + '00001000' + '02000000', 'hex');
  assert.deepEqual(outcome.replies[2], golden(Opt.Go, Rep.Info, blockSize));
  assert.deepEqual(outcome.replies[3], golden(Opt.Go, Rep.Ack));
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

test('NBD_OPT_EXPORT_NAME: size, flags and 124 zero bytes unless NO_ZEROES', () => {
  const padded = handleOption(
    newNegotiatedState(false),
    provider,
    Opt.ExportName,
    Buffer.from('vm1'),
  );
  assert.equal(padded.next, 'transmission');
  assert.equal(padded.replies[0]!.length, 8 + 2 + 124);
  const bare = handleOption(newNegotiatedState(true), provider, Opt.ExportName, Buffer.from('vm1'));
  assert.equal(bare.replies[0]!.length, 10);
  assert.equal(bare.replies[0]!.readUInt32BE(4), 1 << 20);
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
  const flags = transmissionFlags(ro.device);
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
    transmissionFlags(vm1.device) & TransmitFlag.SendTrim,
    'a writable one does advertise trim',
  );
});
