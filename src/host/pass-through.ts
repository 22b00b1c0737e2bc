import type {
  BlockCaps,
  BlockDevice,
  BlockLimits,
  Extent,
  WriteOptions,
  ZeroOptions,
} from '../block/device.js';
import { BlockError, BlockErrorCode } from '../block/errors.js';
import type { Switch } from '../block/switch.js';
import { NbdClientPool, type PoolOptions } from '../nbd/client-pool.js';
import type { NbdExport } from '../nbd/exports.js';
import { errorMessageOf } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import type { Datastore, Tombstone } from './datastore.js';
import type { PeerLink } from './remote-mover.js';

/**
 * A disk that moved to another host, still exported here under its name (issue 7: "the source
 * host's export of it keeps working as a pass-through to the destination, so a guest still
 * connected to the source keeps running"). The disk's authority is at `host`; this host keeps
 * only the tombstone that says so, and forwards every request there over NBD with TLS-PSK.
 */
export interface PassThrough {
  readonly name: string;
  /** The host the disk lives on now, and its datastore there. */
  readonly host: string;
  readonly datastore: string;
  /** The generation the disk was committed at on `host`. */
  readonly generation: number;
  readonly sizeBytes: number;
  /** The datastore here that holds the tombstone naming `host`. */
  readonly tombstoneAt: Datastore;
  /** What the export serves: the guest's Switch, pointing at a `RemoteDevice`. */
  readonly device: Switch;
  readonly export: NbdExport;
}

/**
 * The pass-through that a tombstone naming a host (`host` and `sizeBytes` set) describes, kept
 * in datastore `tombstoneAt`, serving `device`.
 */
export function passThroughOf(
  tombstone: Tombstone,
  tombstoneAt: Datastore,
  device: Switch,
): PassThrough {
  const host = tombstone.host ?? '';
  const sizeBytes = tombstone.sizeBytes ?? 0;
  return {
    name: tombstone.name,
    host,
    datastore: tombstone.datastore,
    generation: tombstone.generation,
    sizeBytes,
    tombstoneAt,
    device,
    export: {
      name: tombstone.name,
      description: `${formatSize(sizeBytes)} raw disk on host ${host} (datastore ${tombstone.datastore}), passed through`,
      device,
    },
  };
}

export interface RemoteDiskOptions {
  readonly name: string;
  readonly host: string;
  readonly sizeBytes: number;
  /** The link to `host` now: a host removed meanwhile fails each connection attempt. */
  readonly peerNamed: (host: string) => PeerLink | undefined;
  /** Connections already open to the disk (a move's own), used until they break. */
  readonly initial?: BlockDevice;
  readonly pool?: PoolOptions;
}

/**
 * Disk `name` on peer `host` as a device: connects to its export there when first used (or
 * after its connections broke), over TLS with the peer's key, at the NBD port the peer reports
 * at that moment (a peer that restarted may listen elsewhere).
 */
export function remoteDisk(options: RemoteDiskOptions): RemoteDevice {
  const { name, host } = options;
  return new RemoteDevice({
    size: options.sizeBytes,
    label: `disk ${name} on host ${host}`,
    ...(options.initial === undefined ? {} : { initial: options.initial }),
    connect: async () => {
      const peer = options.peerNamed(host);
      if (!peer) throw new Error(`host ${host} is not known here any more (ferry host add)`);
      const port = await peer.nbdPort();
      return NbdClientPool.connect(
        { host: peer.nbdHost, port, exportName: name, tls: { psk: peer.psk } },
        options.pool,
      );
    },
  });
}

/** The caps of a raw disk served by a peer agent (what its export advertises). */
const REMOTE_CAPS: BlockCaps = {
  isReadOnly: false,
  canFlush: true,
  fua: 'native',
  zero: 'native',
  trim: 'native',
  canExtents: true,
  isMultiConnSafe: true,
};

/**
 * A device on another host, (re)connected on demand: the pass-through's bottom. It starts
 * either connected (the migration's own connections, handed over at the switchover) or not (an
 * agent that restarted), and connects at the first request. When a request fails because the
 * connection broke, the connection is dropped and the request fails with EIO — it is not
 * retried, since the guest decides about its own writes — and the next request connects again.
 * Only one connection attempt runs at a time; requests meanwhile wait for it.
 */
export class RemoteDevice implements BlockDevice {
  readonly size: number;
  readonly caps: BlockCaps;
  readonly limits: BlockLimits;
  private current: BlockDevice | undefined;
  private connecting: Promise<BlockDevice> | undefined;
  private isClosed = false;

  constructor(
    private readonly options: {
      readonly size: number;
      /** What the disk is, for error messages ("disk vm1 on host b"). */
      readonly label: string;
      readonly connect: () => Promise<BlockDevice>;
      readonly initial?: BlockDevice;
    },
  ) {
    this.size = options.size;
    this.current = options.initial;
    this.caps = options.initial?.caps ?? REMOTE_CAPS;
    this.limits = options.initial?.limits ?? {
      minimumBytes: 1,
      preferredBytes: 4096,
      maximumBytes: 32 * 1024 * 1024,
      inFlightMax: 64,
    };
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.run((device) => device.read(offset, length));
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.run((device) => device.write(offset, data, options));
  }

  writeZeroes(offset: number, length: number, options?: ZeroOptions): Promise<void> {
    return this.run((device) => device.writeZeroes(offset, length, options));
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.run((device) => device.trim(offset, length, options));
  }

  flush(): Promise<void> {
    return this.run((device) => device.flush());
  }

  cache(offset: number, length: number): Promise<void> {
    return this.run((device) => device.cache(offset, length));
  }

  extents(offset: number, length: number, runsMax?: number): Promise<Extent[]> {
    return this.run((device) => device.extents(offset, length, runsMax));
  }

  async close(): Promise<void> {
    this.isClosed = true;
    const device = this.current;
    this.current = undefined;
    await device?.close();
  }

  private async run<T>(request: (device: BlockDevice) => Promise<T>): Promise<T> {
    const device = await this.device();
    try {
      return await request(device);
    } catch (error) {
      if (isConnectionLost(error) && this.current === device) {
        this.current = undefined;
        void device.close().catch(() => undefined);
      }
      throw error;
    }
  }

  private async device(): Promise<BlockDevice> {
    if (this.isClosed) throw new BlockError(BlockErrorCode.ESHUTDOWN, 'device is closed');
    if (this.current !== undefined) return this.current;
    this.connecting ??= this.options.connect().finally(() => {
      this.connecting = undefined;
    });
    try {
      this.current = await this.connecting;
      return this.current;
    } catch (error) {
      throw new BlockError(
        BlockErrorCode.EIO,
        `${this.options.label} cannot be reached: ${errorMessageOf(error)}`,
      );
    }
  }
}

/** The NBD client fails every request with EIO or ESHUTDOWN once its connection is gone. */
function isConnectionLost(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return code === BlockErrorCode.EIO || code === BlockErrorCode.ESHUTDOWN;
}
