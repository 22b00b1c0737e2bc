/**
 * A writer of "newc" cpio archives, the format the kernel unpacks as an initramfs
 * (Documentation/driver-api/early-userspace/buffer-format.rst). Written here rather than run
 * through cpio(1) so the archive needs no root (device nodes are just headers) and no host tool.
 *
 * Each entry: a 110-byte ASCII header, the NUL-terminated name padded to 4 bytes (counting the
 * header), then the data padded to 4 bytes. Header fields, 8 hex digits each: magic "070701",
 * ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
 * namesize (with the NUL), check (0). The archive ends with an entry named "TRAILER!!!".
 */

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

export type CpioEntry =
  | { readonly kind: 'dir'; readonly path: string; readonly perm?: number }
  | { readonly kind: 'file'; readonly path: string; readonly data: Buffer; readonly perm?: number }
  | { readonly kind: 'symlink'; readonly path: string; readonly target: string }
  | {
      readonly kind: 'char';
      readonly path: string;
      readonly major: number;
      readonly minor: number;
    };

/** The whole archive, uncompressed. Paths are relative ("bin/sh"); parents must come first. */
export function newcArchive(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  for (const entry of entries) {
    const { mode, data, rdev } = entryBody(entry);
    const nlink = entry.kind === 'dir' ? 2 : 1;
    pushEntry(parts, entry.path, { ino: ino++, mode, nlink, data, rdev });
  }
  pushEntry(parts, 'TRAILER!!!', {
    ino: 0,
    mode: 0,
    nlink: 1,
    data: Buffer.alloc(0),
    rdev: [0, 0],
  });
  return Buffer.concat(parts);
}

function entryBody(entry: CpioEntry): { mode: number; data: Buffer; rdev: [number, number] } {
  switch (entry.kind) {
    case 'dir':
      return { mode: S_IFDIR | (entry.perm ?? 0o755), data: Buffer.alloc(0), rdev: [0, 0] };
    case 'file':
      return { mode: S_IFREG | (entry.perm ?? 0o644), data: entry.data, rdev: [0, 0] };
    case 'symlink':
      return { mode: S_IFLNK | 0o777, data: Buffer.from(entry.target), rdev: [0, 0] };
    case 'char':
      return { mode: S_IFCHR | 0o600, data: Buffer.alloc(0), rdev: [entry.major, entry.minor] };
  }
}

function pushEntry(
  parts: Buffer[],
  name: string,
  e: { ino: number; mode: number; nlink: number; data: Buffer; rdev: [number, number] },
): void {
  const nameBytes = Buffer.from(name + '\0');
  const fields = [
    e.ino,
    e.mode,
    0, // uid: root
    0, // gid: root
    e.nlink,
    0, // mtime: fixed, so the same inputs give the same archive
    e.data.length,
    0, // devmajor
    0, // devminor
    e.rdev[0],
    e.rdev[1],
    nameBytes.length,
    0, // check: only used by the "070702" variant
  ];
  const header = '070701' + fields.map((v) => v.toString(16).padStart(8, '0')).join('');
  parts.push(Buffer.from(header, 'ascii'), nameBytes, padding(header.length + nameBytes.length));
  parts.push(e.data, padding(e.data.length));
}

function padding(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}
