import type { BlockDevice } from '../block/device.js';

/**
 * What the NBD server serves. The server knows nothing of datastores or disks: it asks an
 * `ExportProvider` for a name when a client says `NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`, and lists
 * the provider's exports for `NBD_OPT_LIST`.
 */
export interface NbdExport {
  /** The export name clients ask for (DESIGN.md: export name = disk name). */
  readonly name: string;
  /** Free text for `NBD_INFO_DESCRIPTION`. */
  readonly description: string;
  /** The device requests go to; the server never closes it (its owner does). */
  readonly device: BlockDevice;
}

export interface ExportProvider {
  lookup(name: string): NbdExport | undefined;
  list(): readonly NbdExport[];
}
