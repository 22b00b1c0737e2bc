import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { PskKey } from '../nbd/psk-file.js';
import type { QmpClient } from './qemu/qmp-client.js';

/**
 * QEMU's memory stream between two hosts over TLS with the hosts' pre-shared key (the same key
 * their agents prove to each other, hosts.ts), so a VM's memory never crosses the network in the
 * clear, as its disks do not (NBD over TLS). QEMU reads the key from `keys.psk` in a directory
 * of its own (`tls-creds-psk`, psktool's format); the file is 0600 in the VM's run directory.
 */
const CREDS_ID = 'ferry-migration-tls';

/** Gives QEMU the key and makes its next migration (either end) use TLS with it. */
export async function useMigrationTls(
  qmp: QmpClient,
  dir: string,
  key: PskKey,
  endpoint: 'client' | 'server',
): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFile(join(dir, 'keys.psk'), `${key.identity}:${key.key.toString('hex')}\n`, {
    mode: 0o600,
  });
  // A second attempt (with auto-converge) finds the object of the first.
  await qmp.execute('object-del', { id: CREDS_ID }).catch(() => undefined);
  await qmp.execute('object-add', {
    'qom-type': 'tls-creds-psk',
    id: CREDS_ID,
    dir,
    endpoint,
    ...(endpoint === 'client' ? { username: key.identity } : {}),
  });
  await qmp.execute('migrate-set-parameters', { 'tls-creds': CREDS_ID });
}
