/**
 * fio as the guest of the live migration tests: 4 KiB random writes over a fixed size with the
 * random map on, so each block is written exactly once and a later `--verify_only` pass proves
 * that no acknowledged write was lost (DESIGN.md, "How we know it works"). `target` is an NBD
 * URI (fio's nbd engine) or a file path (the image itself, read with psync).
 */
export function fioArgs(target: string, sizeBytes: number, extra: readonly string[]): string[] {
  return [
    '--name=guest',
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=16',
    `--size=${sizeBytes}`,
    '--verify=crc32c',
    '--verify_fatal=1',
    '--randseed=1234',
    ...extra,
    '--output-format=json',
    target.startsWith('nbd') ? '--ioengine=nbd' : '--ioengine=psync',
    target.startsWith('nbd') ? `--uri=${target}` : `--filename=${target}`,
  ];
}
