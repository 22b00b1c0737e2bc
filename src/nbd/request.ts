import type { BlockDevice } from '../block/device.js';
import type { RequestHeader } from './codec.js';
import { Cmd, CmdFlag, Errno, PAYLOAD_BYTES_MAX } from './protocol.js';

/**
 * Validation of one transmission-phase request, in one place (STYLE.md, "Validate each request
 * in one place"). Returns 0 when the request may go to the device, otherwise the NBD error to
 * reply with; the connection carries on either way (the payload of a write is already read).
 */

const FLAGS_ALLOWED: Record<number, number> = {
  [Cmd.Read]: CmdFlag.Df,
  [Cmd.Write]: CmdFlag.Fua,
  [Cmd.Flush]: 0,
  [Cmd.Trim]: CmdFlag.Fua,
  [Cmd.Cache]: 0,
  [Cmd.WriteZeroes]: CmdFlag.Fua | CmdFlag.NoHole | CmdFlag.FastZero,
  [Cmd.BlockStatus]: CmdFlag.ReqOne,
  [Cmd.Disc]: 0,
};

export interface RequestContext {
  readonly device: BlockDevice;
  readonly isStructured: boolean;
  readonly isBaseAllocation: boolean;
}

export function validateRequest(header: RequestHeader, context: RequestContext): number {
  const allowed = FLAGS_ALLOWED[header.type];
  if (allowed === undefined) return Errno.EINVAL;
  if ((header.flags & ~allowed) !== 0) return Errno.EINVAL;
  const { device } = context;
  const end = header.offset + header.length;
  switch (header.type) {
    case Cmd.Read:
      if (header.length > PAYLOAD_BYTES_MAX) return Errno.EINVAL;
      return end > device.size ? Errno.EINVAL : 0;
    case Cmd.Write:
    case Cmd.WriteZeroes:
      // proto.md "Error values": writes past the end get ENOSPC, writes to read-only EPERM.
      if (device.caps.isReadOnly) return Errno.EPERM;
      return end > device.size ? Errno.ENOSPC : 0;
    case Cmd.Trim:
      if (device.caps.isReadOnly) return Errno.EPERM;
      return end > device.size ? Errno.EINVAL : 0;
    case Cmd.Cache:
      return end > device.size ? Errno.EINVAL : 0;
    case Cmd.BlockStatus:
      if (!context.isStructured || !context.isBaseAllocation) return Errno.EINVAL;
      if (header.length === 0) return Errno.EINVAL;
      return end > device.size ? Errno.EINVAL : 0;
    default:
      return 0;
  }
}
