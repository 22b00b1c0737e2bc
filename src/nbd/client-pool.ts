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
 */
export const POOL_CONNECTIONS_DEFAULT = 4;

export class NbdClientPool implements BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits;
  private readonly clients: readonly NbdClient[];
  private isClosed = false;

  private constructor(clients: readonly NbdClient[]) {
    const first = clients[0];
    assert(first !== undefined, 'a pool has at least one connection');
    this.clients = clients;
    this.size = first.size;
    this.caps = first.caps;
    this.limits = { ...first.limits, inFlightMax: first.limits.inFlightMax * clients.length };
  }

  /**
   * Opens `connections` connections (default 4) with the same options. Falls back to one when
   * the server does not allow multi-conn. Rejects (closing what opened) if any connection fails.
   */
  static async connect(
    options: NbdClientOptions,
    connections = POOL_CONNECTIONS_DEFAULT,
  ): Promise<NbdClientPool> {
    assert(Number.isSafeInteger(connections) && connections >= 1, 'connections must be >= 1');
    const first = await NbdClient.connect(options);
    if (connections === 1 || !first.caps.isMultiConnSafe) return new NbdClientPool([first]);
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
    return new NbdClientPool(opened);
  }

  get connectionCount(): number {
    return this.clients.length;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    return this.pick().read(offset, length);
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.pick().write(offset, data, options);
  }

  async writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.pick().writeZeroes(offset, length, options);
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.pick().trim(offset, length, options);
  }

  /** Multi-conn: one connection's flush covers the writes completed on all of them. */
  async flush(): Promise<void> {
    return this.pick().flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    return this.pick().cache(offset, length);
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    return this.pick().extents(offset, length);
  }

  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    await Promise.all(this.clients.map((client) => client.close().catch(() => undefined)));
  }

  /** The open connection with the fewest requests in flight. */
  private pick(): NbdClient {
    if (this.isClosed) throw new BlockError(BlockErrorCode.ESHUTDOWN, 'NBD pool is closed');
    let best: NbdClient | undefined;
    for (const client of this.clients) {
      if (best === undefined || client.inFlightCount < best.inFlightCount) best = client;
    }
    return best as NbdClient;
  }
}
