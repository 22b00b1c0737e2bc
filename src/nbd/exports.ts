import type { BlockDevice } from '../block/device.js';

/**
 * What the NBD server serves. The server knows nothing of datastores or disks: it asks an
 * `ExportProvider` for a name when a client says `NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`, and lists
 * the provider's exports for `NBD_OPT_LIST`. It says who is asking (`ExportAccess`), so the
 * provider can keep an export to one peer (a receiving export, issue 7: only the source agent,
 * over TLS with its pre-shared key, may see it).
 */
export interface NbdExport {
  /** The export name clients ask for (DESIGN.md: export name = disk name). */
  readonly name: string;
  /** Free text for `NBD_INFO_DESCRIPTION`. */
  readonly description: string;
  /** The device requests go to; the server never closes it (its owner does). */
  readonly device: BlockDevice;
}

/** What the handshake proved about the client by the time it asks for an export. */
export interface ExportAccess {
  /** The connection was upgraded with NBD_OPT_STARTTLS. */
  readonly isTls: boolean;
  /** The TLS-PSK identity the client proved it holds the key of; null otherwise. */
  readonly pskIdentity: string | null;
  /**
   * The connection came in on a local Unix socket that only this host's root can open (the one
   * the agent's own QEMU guests use): it may see a VM's disks arriving from another host.
   */
  readonly isLocal?: boolean;
}

/** A plain connection: no TLS, no identity. */
export const PLAIN_ACCESS: ExportAccess = { isTls: false, pskIdentity: null };

/** A connection on the agent's local Unix socket. */
export const LOCAL_ACCESS: ExportAccess = { isTls: false, pskIdentity: null, isLocal: true };

export interface ExportProvider {
  lookup(name: string, access: ExportAccess): NbdExport | undefined;
  list(access: ExportAccess): readonly NbdExport[];
}
