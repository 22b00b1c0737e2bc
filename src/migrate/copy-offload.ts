import type { RawFileDevice } from '../block/raw-file.js';

/**
 * Copy offload, what VAAI's XCOPY is to Storage vMotion: when a move's source and destination are
 * both raw images on this host, the copier hands each data run to the kernel instead of reading
 * it into JavaScript and writing it back.
 *
 * - `reflink`: FICLONERANGE. Where both images sit on one file system that shares extents (XFS
 *   with reflink, Btrfs), the destination's range comes to share the source's blocks: only
 *   metadata is written, whatever the run's size. Later writes to either side copy on write.
 * - `copy_file_range`: the kernel copies the bytes (a splice between page caches, or a server-
 *   side copy on NFS); none of them cross into the process.
 * - `read-write`: the copier's own path, where the kernel refuses both for these two files.
 *
 * Each way is tried until the kernel first refuses it (EXDEV: two file systems; EOPNOTSUPP: no
 * shared extents; EINVAL, ENOSYS), then not again for this move. The copier's rules do not change
 * with the way: a run's dirty bits are cleared before it is handed over, and under the methods'
 * range lock, exactly as before a read.
 */
export type CopyPath = 'reflink' | 'copy_file_range' | 'read-write';

export interface CopyOffload {
  /** The way the next run would take now (the best one not yet refused). */
  readonly path: CopyPath;
  /**
   * Copies `[offset, offset+length)` from the source to the same range of the destination in
   * the kernel and resolves with the way it took, or `read-write` when the copier must do it
   * (nothing was written then). An I/O error (EIO, ENOSPC) rejects, as a write would.
   */
  copy(offset: number, length: number): Promise<CopyPath>;
}

/** FICLONERANGE works in whole file-system blocks; 4 KiB is the block size of every one we use. */
const CLONE_ALIGN_BYTES = 4096;

export class FileCopyOffload implements CopyOffload {
  private canClone: boolean;
  private canCopy = true;

  /** `isReflinkAllowed: false` keeps the bytes separate (copy_file_range at best). */
  constructor(
    private readonly source: RawFileDevice,
    private readonly target: RawFileDevice,
    options: { readonly isReflinkAllowed?: boolean } = {},
  ) {
    this.canClone = options.isReflinkAllowed ?? true;
  }

  get path(): CopyPath {
    if (this.canClone) return 'reflink';
    return this.canCopy ? 'copy_file_range' : 'read-write';
  }

  async copy(offset: number, length: number): Promise<CopyPath> {
    if (this.canClone && this.isCloneable(offset, length)) {
      if (await this.source.cloneRangeTo(this.target, offset, length)) return 'reflink';
      this.canClone = false;
    }
    if (this.canCopy) {
      if (await this.source.copyRangeTo(this.target, offset, length)) return 'copy_file_range';
      this.canCopy = false;
    }
    return 'read-write';
  }

  /**
   * Whole blocks, or a tail that ends at the end of the image (the kernel allows that one). A
   * run that is neither goes by copy_file_range without giving up reflinks for the rest.
   */
  private isCloneable(offset: number, length: number): boolean {
    if (offset % CLONE_ALIGN_BYTES !== 0) return false;
    return length % CLONE_ALIGN_BYTES === 0 || offset + length === this.source.size;
  }
}
