import { performance } from 'node:perf_hooks';
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
import { NbdClient, type NbdClientOptions } from './client.js';

/**
 * Several NBD connections to one export, used as one `BlockDevice`: the way the copier and the
 * mirror write to a peer agent's receiving export (DESIGN.md, "Cross-host": "pipelined over
 * several connections"). One TCP connection over a link with delay carries at most a window per
 * round trip, and one TLS stream is ciphered on one core; a few connections fill the link.
 *
 * Each request goes to the connection with the fewest requests in flight. That is safe only
 * because the server advertises NBD_FLAG_CAN_MULTI_CONN (checked at connect): then a flush on
 * any one connection makes durable every write completed on all of them (proto.md, "Multi-conn"),
 * so `flush` is sent on one. The caller keeps its own order between overlapping writes (it waits
 * for one before sending the next, as the copier and the mirror do); two overlapping writes in
 * flight at once may land in either order, exactly as on one connection.
 *
 * A connection that breaks fails its requests in flight with EIO and every later request on
 * the pool (the pool does not reconnect: a migration that lost its link fails and rolls back).
 * A link that dies without a word (a cable pulled: no FIN, no RST) would leave requests waiting
 * for TCP's own timeout, many minutes; so a request unanswered for `requestTimeoutMs` closes
 * every connection, failing what is in flight with EIO. The mirror holds guest writes on that
 * answer in sync mode, so the bound is also the longest a dead link stalls the guest.
 */
export const POOL_CONNECTIONS_DEFAULT = 4;
export const POOL_REQUEST_TIMEOUT_MS_DEFAULT = 15_000;
/** How often requests in flight are checked against the timeout. */
const SWEEP_INTERVAL_MS = 500;

export interface PoolOptions {
  /** Connections to open; default 4 (one when the server does not allow multi-conn). */
  readonly connections?: number;
  /** A request unanswered this long breaks the pool; default 15 s. */
  readonly requestTimeoutMs?: number;
}

interface InFlight {
  readonly startedMs: number;
}

export class NbdClientPool implements BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits;
  private readonly clients: readonly NbdClient[];
  private isClosed = false;
  private isBroken = false;
  private readonly inFlight = new Set<InFlight>();
  private readonly requestTimeoutMs: number;
  private readonly sweep: NodeJS.Timeout;

  private constructor(clients: readonly NbdClient[], requestTimeoutMs: number) {
    const first = clients[0];
    assert(first !== undefined, 'a pool has at least one connection');
    this.clients = clients;
    this.size = first.size;
    this.caps = first.caps;
    this.limits = { ...first.limits, inFlightMax: first.limits.inFlightMax * clients.length };
    this.requestTimeoutMs = requestTimeoutMs;
    this.sweep = setInterval(() => this.checkStalled(), SWEEP_INTERVAL_MS);
    this.sweep.unref();
  }

  /**
   * Opens `connections` connections (default 4) with the same options. Falls back to one when
   * the server does not allow multi-conn. Rejects (closing what opened) if any connection fails.
   */
  static async connect(options: NbdClientOptions, pool: PoolOptions = {}): Promise<NbdClientPool> {
    const connections = pool.connections ?? POOL_CONNECTIONS_DEFAULT;
    const timeoutMs = pool.requestTimeoutMs ?? POOL_REQUEST_TIMEOUT_MS_DEFAULT;
    assert(Number.isSafeInteger(connections) && connections >= 1, 'connections must be >= 1');
    const first = await NbdClient.connect(options);
    if (connections === 1 || !first.caps.isMultiConnSafe) {
      return new NbdClientPool([first], timeoutMs);
    }
    const rest = await Promise.allSettled(
      Array.from({ length: connections - 1 }, () => NbdClient.connect(options)),
    );
    const opened = [first];
    for (const result of rest) if (result.status === 'fulfilled') opened.push(result.value);
    const failed = rest.find((result) => result.status === 'rejected');
    if (failed !== undefined) {
      await Promise.all(opened.map((client) => client.close().catch(() => undefined)));
      throw failed.reason;
    }
    return new NbdClientPool(opened, timeoutMs);
  }

  get connectionCount(): number {
    return this.clients.length;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return this.track((client) => client.read(offset, length));
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.track((client) => client.write(offset, data, options));
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.track((client) => client.writeZeroes(offset, length, options));
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.track((client) => client.trim(offset, length, options));
  }

  /** Multi-conn: one connection's flush covers the writes completed on all of them. */
  async flush(): Promise<void> {
    return this.track((client) => client.flush());
  }

  async cache(offset: number, length: number): Promise<void> {
    return this.track((client) => client.cache(offset, length));
  }

  async extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    return this.track((client) => client.extents(offset, length, runsMax));
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    clearInterval(this.sweep);
    await Promise.all(this.clients.map((client) => client.close().catch(() => undefined)));
  }

  private async track<T>(request: (client: NbdClient) => Promise<T>): Promise<T> {
    const entry: InFlight = { startedMs: performance.now() };
    this.inFlight.add(entry);
    try {
      return await request(this.pick());
    } finally {
      this.inFlight.delete(entry);
    }
  }

  /** A request older than the timeout means a dead link: close every connection. */
  private checkStalled(): void {
    if (this.isBroken || this.inFlight.size === 0) return;
    const limitMs = performance.now() - this.requestTimeoutMs;
    for (const entry of this.inFlight) {
      if (entry.startedMs >= limitMs) continue;
      this.isBroken = true;
      for (const client of this.clients) void client.close().catch(() => undefined);
      return;
    }
  }

  /** The open connection with the fewest requests in flight. */
  private pick(): NbdClient {
    if (this.isClosed) throw new BlockError(BlockErrorCode.ESHUTDOWN, 'NBD pool is closed');
    if (this.isBroken) {
      throw new BlockError(
        BlockErrorCode.EIO,
        `the NBD server did not answer within ${this.requestTimeoutMs} ms; the connections were closed`,
      );
    }
    let best: NbdClient | undefined;
    for (const client of this.clients) {
      if (best === undefined || client.inFlightCount < best.inFlightCount) best = client;
    }
    return best as NbdClient;
  }
}
