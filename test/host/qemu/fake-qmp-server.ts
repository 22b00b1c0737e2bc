import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after } from 'node:test';
import { makeTempDir } from '../temp-dir.js';

export interface FakeCommand {
  readonly execute: string;
  readonly arguments?: Record<string, unknown>;
  readonly id?: unknown;
}

/** What the fake does with each command after `qmp_capabilities`; it may answer later, or never. */
export type FakeHandler = (command: FakeCommand, peer: FakePeer) => void;

export interface FakePeer {
  readonly socket: Socket;
  send(message: object): void;
  reply(command: FakeCommand, value?: unknown): void;
  fail(command: FakeCommand, errorClass: string, desc: string): void;
  event(name: string, data?: object): void;
}

/**
 * A QMP server that speaks just enough of docs/interop/qmp-spec.txt (greeting, capabilities
 * negotiation, id echo) for the client's tests; the tests that need real QEMU behaviour run
 * QEMU. Closed by an `after` hook.
 */
export async function startFakeQmp(
  handler: FakeHandler,
  path?: string,
): Promise<{ path: string; server: Server; peers: FakePeer[] }> {
  const socketPath = path ?? join(await makeTempDir('ferry-qmp-'), 'qmp.sock');
  const peers: FakePeer[] = [];
  const server = createServer((socket) => {
    const peer = makePeer(socket);
    peers.push(peer);
    peer.send({ QMP: { version: { qemu: { micro: 0, minor: 2, major: 7 } }, capabilities: [] } });
    let buffered = '';
    socket.on('data', (chunk) => {
      buffered += chunk.toString('utf8');
      for (let newline = buffered.indexOf('\n'); newline >= 0; newline = buffered.indexOf('\n')) {
        const command = JSON.parse(buffered.slice(0, newline)) as FakeCommand;
        buffered = buffered.slice(newline + 1);
        if (command.execute === 'qmp_capabilities') peer.reply(command, {});
        else handler(command, peer);
      }
    });
    socket.on('error', () => {});
  });
  server.listen(socketPath);
  await once(server, 'listening');
  after(() => {
    for (const peer of peers) peer.socket.destroy();
    server.close();
  });
  return { path: socketPath, server, peers };
}

function makePeer(socket: Socket): FakePeer {
  const send = (message: object): void => {
    if (!socket.destroyed) socket.write(`${JSON.stringify(message)}\r\n`);
  };
  return {
    socket,
    send,
    reply: (command, value = {}) => send({ return: value, id: command.id }),
    fail: (command, errorClass, desc) =>
      send({ error: { class: errorClass, desc }, id: command.id }),
    event: (name, data = {}) =>
      send({ event: name, data, timestamp: { seconds: 1, microseconds: 2 } }),
  };
}
