import { FerryError } from '../util/errors.js';

/**
 * Errors of the block layer. Each code names one NBD error (proto.md, "Error values") so the
 * server maps a failure to its reply without guessing; `fromSystemError` folds the errno of a
 * failed file operation into the same set.
 */
export const BlockErrorCode = {
  EPERM: 'EPERM',
  EIO: 'EIO',
  ENOMEM: 'ENOMEM',
  EINVAL: 'EINVAL',
  ENOSPC: 'ENOSPC',
  EOVERFLOW: 'EOVERFLOW',
  ENOTSUP: 'ENOTSUP',
  ESHUTDOWN: 'ESHUTDOWN',
} as const;
export type BlockErrorCode = (typeof BlockErrorCode)[keyof typeof BlockErrorCode];

export class BlockError extends FerryError<BlockErrorCode> {
  override readonly name = 'BlockError';
}

export function isBlockError(error: unknown): error is BlockError {
  return error instanceof BlockError;
}

/** Maps a Node system error (an `errno` code such as `ENOSPC`) to the nearest NBD error. */
export function fromSystemError(error: unknown, what: string): BlockError {
  if (error instanceof BlockError) return error;
  const code = (error as { code?: unknown } | null)?.code;
  const mapped: BlockErrorCode = (() => {
    switch (code) {
      case 'ENOSPC':
      case 'EDQUOT':
        return BlockErrorCode.ENOSPC;
      case 'EPERM':
      case 'EACCES':
      case 'EROFS':
        return BlockErrorCode.EPERM;
      case 'ENOMEM':
        return BlockErrorCode.ENOMEM;
      case 'EINVAL':
        return BlockErrorCode.EINVAL;
      case 'EFBIG':
      case 'EOVERFLOW':
        return BlockErrorCode.EOVERFLOW;
      case 'EOPNOTSUPP':
      case 'ENOTSUP':
        return BlockErrorCode.ENOTSUP;
      case 'EBADF':
        return BlockErrorCode.ESHUTDOWN;
      default:
        return BlockErrorCode.EIO;
    }
  })();
  const detail = error instanceof Error ? error.message : String(error);
  return new BlockError(mapped, `${what}: ${detail}`, { cause: error });
}
