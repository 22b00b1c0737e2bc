import { HostError, HostErrorCode } from './errors.js';

/**
 * Names of datastores, disks, VMs, networks and peer hosts. A disk name is also its NBD export name and the stem of its
 * files, so the alphabet is the one that is safe in a file name, a URI path and a shell word
 * alike. A leading '.' is refused because the agent's temporary files start with one (so they can
 * never collide with a disk's files), and a leading '-' because it reads as an option on a
 * command line.
 */
const NAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;

export const NAME_HELP =
  '1 to 64 characters of A-Z, a-z, 0-9, ".", "_" and "-", not starting with "." or "-"';

export type NameKind = 'datastore' | 'disk' | 'vm' | 'host' | 'network';

export function isValidName(name: string): boolean {
  return NAME_PATTERN.test(name);
}

/** Throws `ERR_BAD_NAME` saying what is accepted unless `name` is valid. */
export function checkName(name: string, kind: NameKind): void {
  if (!isValidName(name)) {
    throw new HostError(
      HostErrorCode.BadName,
      `${JSON.stringify(name)} is not a valid ${kind} name: use ${NAME_HELP}`,
    );
  }
}
