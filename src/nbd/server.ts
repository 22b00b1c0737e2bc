import { chmod, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { type Logger, silentLogger } from '../util/logger.js';
import { type ExportProvider, LOCAL_ACCESS, PLAIN_ACCESS } from './exports.js';
import { PayloadPool } from './payload-pool.js';
import { DEFAULT_SESSION_LIMITS, NbdSession, type SessionLimits } from './session.js';
import { createServerTlsContext, type NbdServerTls, type ServerTlsContext } from './tls.js';

/**
 * The NBD server: listeners on TCP and Unix sockets, and the table of live sessions. Every
 * connection gets its own `NbdSession`; all sessions on one export share that export's device,
 * so a flush on any connection covers writes acknowledged on every other (multi-conn).
 */
export interface NbdServerOptions {
  readonly exports: ExportProvider;
  readonly log?: Logger;
  readonly limits?: SessionLimits;
  /** Most connections open at once; more are closed on accept. */
  readonly connectionsMax?: number;
  /** NBD_OPT_STARTTLS with TLS-PSK and/or X.509 (src/nbd/tls.ts); absent: no TLS (NOTLS). */
  readonly tls?: NbdServerTls;
}

export class NbdServer {
  private readonly exports: ExportProvider;
  private readonly log: Logger;
  private readonly limits: SessionLimits;
  private readonly connectionsMax: number;
  private readonly listeners: Server[] = [];
  private readonly unixPaths: string[] = [];
  private readonly sessions = new Set<NbdSession>();
  private isClosing = false;
  /** Shared by every session, so idle connections hold no buffers of their own. */
  private readonly payloads: PayloadPool;
  private readonly tls: ServerTlsContext | undefined;

  constructor(options: NbdServerOptions) {
    this.tls = options.tls === undefined ? undefined : createServerTlsContext(options.tls);
    this.exports = options.exports;
    this.log = options.log ?? silentLogger;
    this.limits = options.limits ?? DEFAULT_SESSION_LIMITS;
    this.connectionsMax = options.connectionsMax ?? 1024;
    this.payloads = new PayloadPool(this.limits.inFlightBytesMax);
  }

  get connectionCount(): number {
    return this.sessions.size;
  }

  /** Listens on `host:port` (port 0 picks a free one) and resolves with the bound address. */
  async listenTcp(host: string, port: number): Promise<{ host: string; port: number }> {
    const server = this.newListener();
    await listen(server, () => server.listen({ host, port, exclusive: true }));
    const address = server.address();
    if (address === null || typeof address === 'string')
      throw new Error('TCP listener has no address');
    this.log.info({ host: address.address, port: address.port }, 'nbd listening on tcp');
    return { host: address.address, port: address.port };
  }

  /**
   * Listens on a Unix socket at `path`, replacing a stale socket file left by a crash. `isLocal`:
   * the agent's own socket for its QEMU guests, made 0600 — no TLS there, and its connections
   * get `LOCAL_ACCESS`.
   */
  async listenUnix(path: string, options: { readonly isLocal?: boolean } = {}): Promise<void> {
    await rm(path, { force: true });
    const server = this.newListener(options.isLocal === true);
    await listen(server, () => server.listen({ path }));
    if (options.isLocal === true) await chmod(path, 0o600);
    this.unixPaths.push(path);
    this.log.info({ path }, 'nbd listening on unix socket');
  }

  /** Closes every connection to export `name` after its requests in flight finish. */
  async dropExport(name: string): Promise<void> {
    const closing = [...this.sessions].filter((session) => session.exportName === name);
    await Promise.all(closing.map((session) => session.close()));
  }

  /** Stops listening, lets requests in flight finish, and closes every connection. */
  async close(): Promise<void> {
    this.isClosing = true;
    const stopped = this.listeners.map(
      (server) => new Promise<void>((resolve) => server.close(() => resolve())),
    );
    await Promise.all([...this.sessions].map((session) => session.close()));
    await Promise.all(stopped);
    await Promise.all(this.unixPaths.map((path) => rm(path, { force: true })));
  }

  private newListener(isLocal = false): Server {
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket, isLocal));
    this.listeners.push(server);
    return server;
  }

  private accept(socket: Socket, isLocal: boolean): void {
    if (this.isClosing || this.sessions.size >= this.connectionsMax) {
      this.log.warn({ connections: this.sessions.size }, 'nbd connection refused');
      socket.destroy();
      return;
    }
    const session = new NbdSession(
      socket,
      this.exports,
      this.log,
      this.limits,
      this.payloads,
      isLocal ? undefined : this.tls,
      isLocal ? LOCAL_ACCESS : PLAIN_ACCESS,
    );
    this.sessions.add(session);
    socket.once('close', () => this.sessions.delete(session));
  }
}

function listen(server: Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      resolve();
    });
    start();
  });
}
