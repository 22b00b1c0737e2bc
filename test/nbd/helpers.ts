import { connect, type Socket } from 'node:net';
import type { BlockDevice } from '../../src/block/device.js';
import { encodeLengthPrefixed, encodeOptionHeader } from '../../src/nbd/codec.js';
import type { ExportProvider, NbdExport } from '../../src/nbd/exports.js';
import { Opt } from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import type { SessionLimits } from '../../src/nbd/session.js';

export interface Running {
  server: NbdServer;
  port: number;
  exports: Map<string, NbdExport>;
}

/** An in-process server on a free loopback port serving the given devices by name. */
export async function startServer(
  devices: Record<string, BlockDevice>,
  limits?: SessionLimits,
): Promise<Running> {
  const exports = new Map<string, NbdExport>();
  for (const [name, device] of Object.entries(devices)) {
    exports.set(name, { name, description: `test ${name}`, device });
  }
  const provider: ExportProvider = {
    lookup: (name) => exports.get(name),
    list: () => [...exports.values()],
  };
  const server = new NbdServer(limits ? { exports: provider, limits } : { exports: provider });
  const { port } = await server.listenTcp('127.0.0.1', 0);
  return { server, port, exports };
}

/** A raw socket that has finished a GO handshake for `name` (simple replies only). */
export async function rawTransmission(port: number, name: string): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const flags = Buffer.alloc(4);
  flags.writeUInt32BE(3);
  const infos = Buffer.alloc(2);
  const data = Buffer.concat([encodeLengthPrefixed(name), infos]);
  socket.write(Buffer.concat([flags, encodeOptionHeader(Opt.Go, data.length), data]));
  // Greeting (18) + INFO_EXPORT reply (20 + 12) + BLOCK_SIZE reply (20 + 14) + ACK (20).
  await readBytes(socket, 18 + 32 + 34 + 20);
  return socket;
}

/**
 * The next `count` bytes from `socket`. The socket is paused again before this returns: a flowing
 * socket with no 'data' listener drops what arrives, so a reply that came while the test was still
 * writing would be lost and the next `readBytes` would wait for ever.
 */
export function readBytes(socket: Socket, count: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let have = 0;
    const onData = (chunk: Buffer): void => {
      parts.push(chunk);
      have += chunk.length;
      if (have >= count) {
        socket.off('data', onData);
        socket.off('close', onClose);
        socket.pause();
        const all = Buffer.concat(parts);
        if (all.length > count) socket.unshift(all.subarray(count));
        resolve(all.subarray(0, count));
      }
    };
    const onClose = (): void => reject(new Error(`socket closed after ${have} of ${count} bytes`));
    socket.on('data', onData);
    socket.once('close', onClose);
    socket.resume();
  });
}

/** Resolves when the peer has closed `socket`; drains unread bytes so the close can surface. */
export function closed(socket: Socket): Promise<void> {
  socket.on('error', () => {});
  socket.resume();
  return new Promise((resolve) => {
    if (socket.destroyed) resolve();
    else socket.once('close', () => resolve());
  });
}
