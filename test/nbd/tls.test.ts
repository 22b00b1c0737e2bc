import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect as connectTls } from 'node:tls';
import { MemoryDevice } from '../../src/block/memory.js';
import { openRawFile } from '../../src/block/raw-file.js';
import { NbdClient } from '../../src/nbd/client.js';
import { encodeLengthPrefixed, encodeOptionHeader } from '../../src/nbd/codec.js';
import type { ExportAccess, ExportProvider, NbdExport } from '../../src/nbd/exports.js';
import { Opt, Rep } from '../../src/nbd/protocol.js';
import { formatPskLine, type PskKey } from '../../src/nbd/psk-file.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { NbdServerTls, NbdTlsMode } from '../../src/nbd/tls.js';
import { closed } from './helpers.js';
import { hasTool, isCi, MiB, runOk, runTool, toolTest } from './interop-helpers.js';

/**
 * NBD_OPT_STARTTLS (proto.md, "TLS support"): our client and our server over TLS-PSK and X.509,
 * the FORCEDTLS rules on the wire, one bad connection not touching the others, the proven
 * identity reaching the export provider, and real clients (qemu-img, qemu-io, nbdinfo, nbdcopy)
 * connecting with their own TLS options. Certificates are made with certtool at setup.
 *
 * fio is not here: its nbd engine (fio 3.33) calls nbd_connect_uri without allowing local files,
 * so libnbd refuses `tls-psk-file` and `tls-certificates` in its URI ("local file access is not
 * allowed"); fio cannot reach a TLS export at all.
 */

const alice: PskKey = { identity: 'alice', key: Buffer.alloc(32, 0xa1) };
const bob: PskKey = { identity: 'bob', key: Buffer.alloc(32, 0xb0) };
const PSK_KEYS = new Map([alice, bob].map((key) => [key.identity, key.key]));

let dir: string;
let x509Dir: string | null = null;

/** Exports `vm1` for everyone and `secret` only for TLS clients that proved identity alice. */
class AccessExports implements ExportProvider {
  readonly seen: ExportAccess[] = [];
  readonly vm1: NbdExport = { name: 'vm1', description: 'shared', device: new MemoryDevice(MiB) };
  readonly secret: NbdExport = {
    name: 'secret',
    description: "alice's",
    device: new MemoryDevice(MiB),
  };

  lookup(name: string, access: ExportAccess): NbdExport | undefined {
    this.seen.push(access);
    return this.list(access).find((entry) => entry.name === name);
  }

  list(access: ExportAccess): readonly NbdExport[] {
    const isAlice = access.isTls && access.pskIdentity === alice.identity;
    return isAlice ? [this.vm1, this.secret] : [this.vm1];
  }
}

interface Served {
  server: NbdServer;
  port: number;
  exports: AccessExports;
}

async function serve(tls: NbdServerTls | undefined): Promise<Served> {
  const exports = new AccessExports();
  const server = new NbdServer(tls === undefined ? { exports } : { exports, tls });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  return { server, port, exports };
}

function pskServer(mode: NbdTlsMode): NbdServerTls {
  return { mode, pskKeyFor: (identity) => PSK_KEYS.get(identity) };
}

async function x509Server(mode: NbdTlsMode): Promise<NbdServerTls> {
  const certs = await requireCerts();
  return {
    mode,
    pskKeyFor: (identity) => PSK_KEYS.get(identity),
    x509: {
      cert: await readFile(join(certs, 'server-cert.pem')),
      key: await readFile(join(certs, 'server-key.pem')),
      ca: await readFile(join(certs, 'ca-cert.pem')),
      verifyClient: true,
    },
  };
}

async function requireCerts(): Promise<string> {
  assert.ok(x509Dir !== null, 'certtool (gnutls-bin) is needed to make test certificates');
  return x509Dir;
}

/** A CA, a server certificate for localhost/127.0.0.1 and a client certificate, QEMU's layout. */
async function makeCertificates(target: string): Promise<void> {
  const template = async (name: string, lines: string[]): Promise<string> => {
    const path = join(target, `${name}.info`);
    await writeFile(path, `${lines.join('\n')}\n`);
    return path;
  };
  const key = (name: string): Promise<unknown> =>
    runOk('certtool', ['--generate-privkey', '--key-type=ecdsa', '--outfile', join(target, name)]);
  await key('ca-key.pem');
  await runOk('certtool', [
    '--generate-self-signed',
    '--load-privkey',
    join(target, 'ca-key.pem'),
    '--template',
    await template('ca', ['cn = Ferry test CA', 'ca', 'cert_signing_key', 'expiration_days = 2']),
    '--outfile',
    join(target, 'ca-cert.pem'),
  ]);
  const signed = async (role: string, lines: string[]): Promise<void> => {
    await key(`${role}-key.pem`);
    await runOk('certtool', [
      '--generate-certificate',
      '--load-privkey',
      join(target, `${role}-key.pem`),
      '--load-ca-certificate',
      join(target, 'ca-cert.pem'),
      '--load-ca-privkey',
      join(target, 'ca-key.pem'),
      '--template',
      await template(role, [...lines, 'signing_key', 'expiration_days = 2']),
      '--outfile',
      join(target, `${role}-cert.pem`),
    ]);
  };
  await signed('server', [
    'cn = localhost',
    'dns_name = localhost',
    'ip_address = 127.0.0.1',
    'tls_www_server',
  ]);
  await signed('client', ['cn = ferry-test-client', 'tls_www_client']);
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ferry-tls-'));
  // QEMU's tls-creds-psk reads DIR/keys.psk; libnbd's tls-psk-file takes the file itself.
  await writeFile(join(dir, 'keys.psk'), `${formatPskLine(alice)}\n`);
  if (hasTool('certtool')) {
    x509Dir = join(dir, 'x509');
    await runOk('mkdir', [x509Dir]);
    await makeCertificates(x509Dir);
  } else if (isCi) {
    throw new Error('certtool not installed (apt-get install gnutls-bin); CI=true');
  }
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function withServer(tls: NbdServerTls | undefined, body: (s: Served) => Promise<void>) {
  const served = await serve(tls);
  try {
    await body(served);
  } finally {
    await served.server.close();
  }
}

async function roundTrip(client: NbdClient): Promise<void> {
  const data = Buffer.alloc(64 * 1024, 0x5a);
  await client.write(4096, data, { fua: true });
  assert.deepEqual(await client.read(4096, data.length), data);
  await client.flush();
}

// ---------------------------------------------------------------------------------------------
// Our client and our server

test('TLS-PSK: our client and server, read/write round trip; the identity reaches the provider', async () => {
  await withServer(pskServer('require'), async ({ port, exports }) => {
    const client = await NbdClient.connect({
      host: '127.0.0.1',
      port,
      exportName: 'secret',
      tls: { psk: alice },
    });
    try {
      await roundTrip(client);
      assert.ok(client.isStructured, 'options negotiated over TLS as usual');
    } finally {
      await client.close();
    }
    assert.deepEqual(exports.seen.at(-1), { isTls: true, pskIdentity: 'alice' });
  });
});

test('TLS-PSK: pipelined reads of a raw image, served from reused buffers, each carry their own block', async () => {
  const path = join(dir, 'tls-pooled.img');
  const blocks = 256;
  const image = Buffer.alloc(blocks * 4096);
  for (let i = 0; i < blocks; i += 1) image.fill(i & 0xff, i * 4096, (i + 1) * 4096);
  await writeFile(path, image);
  const raw = await openRawFile(path, { provisioning: 'thin' });
  const pooled: NbdExport = { name: 'pooled', description: 'raw', device: raw };
  const exports: ExportProvider = {
    lookup: (name) => (name === 'pooled' ? pooled : undefined),
    list: () => [pooled],
  };
  const server = new NbdServer({ exports, tls: pskServer('require') });
  try {
    const { port } = await server.listenTcp('127.0.0.1', 0);
    const client = await NbdClient.connect({
      host: '127.0.0.1',
      port,
      exportName: 'pooled',
      tls: { psk: alice },
    });
    const reads = Array.from({ length: blocks }, (_, i) => client.read(i * 4096, 4096));
    const whole = client.read(0, image.length);
    for (const [i, block] of (await Promise.all(reads)).entries()) {
      assert.ok(block.equals(image.subarray(i * 4096, (i + 1) * 4096)), `block ${i}`);
    }
    assert.ok((await whole).equals(image), 'the 1 MiB read');
    await client.close();
  } finally {
    await server.close();
    await raw.close();
  }
});

test('ExportAccess: an export kept for alice is unknown to bob over TLS and to plain clients', async () => {
  await withServer(pskServer('allow'), async ({ port, exports }) => {
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port, exportName: 'secret', tls: { psk: bob } }),
      /refused export "secret"/,
    );
    assert.deepEqual(exports.seen.at(-1), { isTls: true, pskIdentity: 'bob' });
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port, exportName: 'secret' }),
      /refused export "secret"/,
    );
    assert.deepEqual(exports.seen.at(-1), { isTls: false, pskIdentity: null });
    // allow mode: a plain client still reaches what is not kept for anyone.
    const plain = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'vm1' });
    await roundTrip(plain);
    await plain.close();
  });
});

test('X.509: our client checks the server certificate and presents its own', async () => {
  await withServer(await x509Server('require'), async ({ port, exports }) => {
    const certs = await requireCerts();
    const x509 = {
      ca: await readFile(join(certs, 'ca-cert.pem')),
      cert: await readFile(join(certs, 'client-cert.pem')),
      key: await readFile(join(certs, 'client-key.pem')),
    };
    const client = await NbdClient.connect({
      host: '127.0.0.1',
      port,
      exportName: 'vm1',
      tls: { x509 },
    });
    await roundTrip(client);
    await client.close();
    assert.deepEqual(exports.seen.at(-1), { isTls: true, pskIdentity: null });
    // A CA that did not sign the server's certificate: the handshake fails, nothing is sent.
    await assert.rejects(
      NbdClient.connect({
        host: '127.0.0.1',
        port,
        exportName: 'vm1',
        tls: { x509: { ca: await readFile(join(certs, 'client-cert.pem')) } },
      }),
      (error: Error & { code?: string }) => error.code === 'ERR_NBD_TLS_HANDSHAKE',
    );
    // No client certificate while the server verifies clients: refused.
    await assert.rejects(
      NbdClient.connect({
        host: '127.0.0.1',
        port,
        exportName: 'vm1',
        tls: { x509: { ca: x509.ca } },
      }),
    );
  });
});

test('require: a plain client gets ERR_NBD_TLS_REQUIRED saying how to configure TLS', async () => {
  await withServer(pskServer('require'), async ({ port }) => {
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port, exportName: 'vm1' }),
      (error: Error & { code?: string }) =>
        error.code === 'ERR_NBD_TLS_REQUIRED' && /tls: \{ psk \}/.test(error.message),
    );
  });
});

test('no TLS configured: a TLS client is refused by ERR_POLICY and does not go on in clear', async () => {
  await withServer(undefined, async ({ port }) => {
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port, exportName: 'vm1', tls: { psk: alice } }),
      (error: Error & { code?: string }) =>
        error.code === 'ERR_NBD_TLS_REFUSED' && /not configured/.test(error.message),
    );
  });
});

test('a wrong key fails that connection only; a good client right after works', async () => {
  await withServer(pskServer('require'), async ({ server, port }) => {
    const held = await NbdClient.connect({
      host: '127.0.0.1',
      port,
      exportName: 'vm1',
      tls: { psk: alice },
    });
    const wrong = { identity: 'alice', key: Buffer.alloc(32, 0xee) };
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port, exportName: 'vm1', tls: { psk: wrong } }),
      (error: Error & { code?: string }) => error.code === 'ERR_NBD_TLS_HANDSHAKE',
    );
    const stranger = { identity: 'mallory', key: Buffer.alloc(32, 0x33) };
    await assert.rejects(
      NbdClient.connect({ host: '127.0.0.1', port, exportName: 'vm1', tls: { psk: stranger } }),
    );
    await roundTrip(held);
    const next = await NbdClient.connect({
      host: '127.0.0.1',
      port,
      exportName: 'vm1',
      tls: { psk: alice },
    });
    await roundTrip(next);
    await next.close();
    await held.close();
    await waitFor(() => server.connectionCount === 0);
  });
});

// ---------------------------------------------------------------------------------------------
// The wire, byte by byte

/** Everything a socket receives, kept until read: no byte is lost between two reads. */
class Wire {
  private held = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  private isEnded = false;

  constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.held = Buffer.concat([this.held, chunk]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.isEnded = true;
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  async read(count: number): Promise<Buffer> {
    while (this.held.length < count) {
      assert.ok(!this.isEnded, `connection closed with ${this.held.length} of ${count} bytes`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
    const out = this.held.subarray(0, count);
    this.held = this.held.subarray(count);
    return out;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** Resolves once the peer has closed the connection. */
  closed(): Promise<void> {
    return closed(this.socket);
  }
}

/** Connects, reads the 18-byte greeting and sends client flags FIXED_NEWSTYLE | NO_ZEROES. */
async function rawHandshake(port: number): Promise<Wire> {
  const socket = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const wire = new Wire(socket);
  await wire.read(18);
  wire.write(Buffer.from('00000003', 'hex'));
  return wire;
}

function option(type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([encodeOptionHeader(type, data.length), data]);
}

/** Reads one option reply; returns its type and data. */
async function readReply(wire: Wire): Promise<{ option: number; type: number; data: Buffer }> {
  const header = await wire.read(20);
  const length = header.readUInt32BE(16);
  const data = await wire.read(length);
  return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
}

function goData(name: string): Buffer {
  return Buffer.concat([encodeLengthPrefixed(name), Buffer.alloc(2)]);
}

test('require on the wire: GO gets ERR_TLS_REQD, ABORT is served, EXPORT_NAME closes', async () => {
  await withServer(pskServer('require'), async ({ port }) => {
    const socket = await rawHandshake(port);
    for (const type of [Opt.Go, Opt.List, Opt.StructuredReply, Opt.Info]) {
      socket.write(option(type, type === Opt.Go || type === Opt.Info ? goData('vm1') : undefined));
      const reply = await readReply(socket);
      assert.equal(reply.option, type);
      assert.equal(reply.type, Rep.ErrTlsReqd, `option ${type} before STARTTLS`);
    }
    socket.write(option(Opt.ExportName, Buffer.from('vm1')));
    await socket.closed();
    const aborting = await rawHandshake(port);
    aborting.write(option(Opt.Abort));
    assert.equal((await readReply(aborting)).type, Rep.Ack);
    aborting.socket.destroy();
  });
});

test('STARTTLS with data is invalid, and a second STARTTLS under TLS is invalid', async () => {
  await withServer(pskServer('require'), async ({ port }) => {
    const socket = await rawHandshake(port);
    socket.write(option(Opt.StartTls, Buffer.from([1])));
    assert.equal((await readReply(socket)).type, Rep.ErrInvalid);
    socket.write(option(Opt.StartTls));
    assert.equal((await readReply(socket)).type, Rep.Ack);
    socket.socket.removeAllListeners('data');
    const tlsSocket = connectTls({
      socket: socket.socket,
      ciphers: 'PSK-AES128-GCM-SHA256:TLS_AES_128_GCM_SHA256',
      pskCallback: () => ({ psk: alice.key, identity: alice.identity }),
    });
    await new Promise<void>((resolve, reject) => {
      tlsSocket.once('secureConnect', resolve);
      tlsSocket.once('error', reject);
    });
    const secure = new Wire(tlsSocket);
    secure.write(option(Opt.StartTls));
    const again = await readReply(secure);
    assert.equal(again.type, Rep.ErrInvalid);
    // Still haggling: a GO now succeeds (INFO_EXPORT first).
    secure.write(option(Opt.Go, goData('secret')));
    assert.equal((await readReply(secure)).type, Rep.Info);
    tlsSocket.destroy();
  });
});

test('bytes sent after STARTTLS before its reply close that connection', async () => {
  await withServer(pskServer('allow'), async ({ server, port }) => {
    const socket = await rawHandshake(port);
    socket.write(Buffer.concat([option(Opt.StartTls), Buffer.from('early')]));
    await socket.closed();
    const good = await NbdClient.connect({
      host: '127.0.0.1',
      port,
      exportName: 'vm1',
      tls: { psk: alice },
    });
    await good.close();
    await waitFor(() => server.connectionCount === 0);
  });
});

async function waitFor(check: () => boolean): Promise<void> {
  for (let i = 0; i < 200 && !check(); i += 1) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.ok(check(), 'condition not reached in 2 s');
}

// ---------------------------------------------------------------------------------------------
// Real clients

function pskObject(): string[] {
  return ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=alice`];
}

async function x509Object(): Promise<string[]> {
  return ['--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${await requireCerts()}`];
}

function imageOpts(port: number, name: string): string {
  return `driver=nbd,host=127.0.0.1,port=${port},export=${name},tls-creds=tls0`;
}

function qemuIoArgs(object: string[], port: number, name: string): string[] {
  return [
    ...object,
    '--image-opts',
    imageOpts(port, name),
    '-c',
    'write -P 0x5a 0 64k',
    '-c',
    'read -P 0x5a 0 64k',
  ];
}

toolTest(
  'qemu-img info and qemu-io over TLS-PSK (tls-creds-psk)',
  ['qemu-img', 'qemu-io'],
  async () => {
    await withServer(pskServer('require'), async ({ port, exports }) => {
      const info = await runOk('qemu-img', [
        'info',
        '--output=json',
        ...pskObject(),
        '--image-opts',
        imageOpts(port, 'secret'),
      ]);
      assert.equal((JSON.parse(info.stdout) as { 'virtual-size': number })['virtual-size'], MiB);
      await runOk('qemu-io', qemuIoArgs(pskObject(), port, 'secret'));
      assert.deepEqual(await exports.secret.device.read(0, 65536), Buffer.alloc(65536, 0x5a));
      // The check can fail: other bytes make qemu-io's read -P report a mismatch.
      await exports.secret.device.write(4096, Buffer.alloc(1, 0));
      const mismatch = await runTool('qemu-io', [
        ...pskObject(),
        '--image-opts',
        imageOpts(port, 'secret'),
        '-c',
        'read -P 0x5a 0 64k',
      ]);
      assert.match(mismatch.stdout + mismatch.stderr, /Pattern verification failed/);
      // A plain qemu-img is told TLS is required.
      const plain = await runTool('qemu-img', ['info', `nbd://127.0.0.1:${port}/vm1`]);
      assert.notEqual(plain.code, 0);
      assert.match(plain.stderr, /TLS/i);
    });
  },
);

toolTest('qemu-io over X.509 (tls-creds-x509)', ['qemu-io', 'certtool'], async () => {
  await withServer(await x509Server('require'), async ({ port, exports }) => {
    await runOk('qemu-io', qemuIoArgs(await x509Object(), port, 'vm1'));
    assert.deepEqual(await exports.vm1.device.read(0, 65536), Buffer.alloc(65536, 0x5a));
  });
});

toolTest(
  'nbdinfo over TLS-PSK (tls-psk-file) and X.509 (tls-certificates)',
  ['nbdinfo'],
  async () => {
    await withServer(pskServer('require'), async ({ port }) => {
      const psk = await runOk('nbdinfo', [
        '--json',
        `nbds://alice@127.0.0.1:${port}/secret?tls-psk-file=${join(dir, 'keys.psk')}`,
      ]);
      const [seen] = (JSON.parse(psk.stdout) as { exports: { 'export-size': number }[] }).exports;
      assert.equal(seen?.['export-size'], MiB);
      const wrong = join(dir, 'wrong.psk');
      await writeFile(wrong, `alice:${'ee'.repeat(32)}\n`);
      const refused = await runTool('nbdinfo', [
        '--size',
        `nbds://alice@127.0.0.1:${port}/secret?tls-psk-file=${wrong}`,
      ]);
      assert.notEqual(refused.code, 0, 'a wrong key must not get in');
    });
    await withServer(await x509Server('require'), async ({ port }) => {
      const x509 = await runOk('nbdinfo', [
        '--size',
        `nbds://127.0.0.1:${port}/vm1?tls-certificates=${await requireCerts()}`,
      ]);
      assert.equal(x509.stdout.trim(), String(MiB));
    });
  },
);

toolTest('nbdcopy over TLS-PSK copies an export byte for byte', ['nbdcopy'], async () => {
  await withServer(pskServer('require'), async ({ port, exports }) => {
    const content = Buffer.alloc(MiB);
    for (let at = 0; at < MiB; at += 4096) content.fill(at / 4096, at, at + 512);
    await exports.secret.device.write(0, content);
    const target = join(dir, 'copy.raw');
    await runOk('nbdcopy', [
      `nbds://alice@127.0.0.1:${port}/secret?tls-psk-file=${join(dir, 'keys.psk')}`,
      target,
    ]);
    assert.deepEqual(await readFile(target), content);
  });
});
