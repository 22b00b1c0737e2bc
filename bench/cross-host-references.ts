import { rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Host, HostPair } from '../test/cross-host/netns.js';
import { type LinkSpec, routeTo, TCP_PROBE, waitForListener } from './cross-host-link.js';

/**
 * The reference copies of the cross-host benchmark, each from a raw file on host A into a
 * `qemu-nbd` serving a fresh file on host B over the link (DESIGN.md, "Benchmarks"):
 *
 * - `qemu-img convert -n -t writeback`: QEMU's copy, flushing the target at close (its default
 *   cache mode, `unsafe`, never flushes; Ferry's copy ends durable, so the reference must too);
 * - `nbdcopy --connections=4 --flush`: libnbd's parallel copier, 4 connections, flush at the end;
 * - a plain TCP byte stream (tcp-probe send → sink): what the link carries at most, the ceiling
 *   every NBD copy is under.
 *
 * With TLS, qemu-nbd and both clients use the same PSK (`psktool`, identity `qemu`, the username
 * QEMU sends by default), over NBD_OPT_STARTTLS.
 */

export type ReferenceTool = 'tcp' | 'qemu-img' | 'nbdcopy';

/** The port qemu-nbd listens on inside B (the namespace is ours, so a fixed port cannot clash). */
const NBD_PORT = 10809;
const SINK_PORT = 10810;
const PSK_IDENTITY = 'qemu';

export interface CopyFixture {
  readonly pair: HostPair;
  /** The raw source image, read on A (the namespaces share the file system). */
  readonly sourcePath: string;
  readonly sizeBytes: number;
  /** Where B's target image and the PSK go. */
  readonly dir: string;
  readonly timeoutMs: number;
}

/** Makes the PSK file (`keys.psk` in `dir`, the name qemu's tls-creds-psk reads). */
export async function makePsk(host: Host, dir: string): Promise<string> {
  const path = join(dir, 'keys.psk');
  await rm(path, { force: true });
  const result = await host.exec('psktool', ['-u', PSK_IDENTITY, '-p', path]);
  if (result.code !== 0) throw new Error(`psktool: ${result.stderr}`);
  return path;
}

/**
 * Copies the source over `link` with `tool` (TLS on or off) into a fresh target on B and resolves
 * with the copy's wall time in ms: from starting the client to its exit (the target flushed).
 * The server on B is started before the clock and stopped after.
 */
export async function referenceCopy(
  fixture: CopyFixture,
  link: LinkSpec,
  tool: ReferenceTool,
  isTls: boolean,
): Promise<number> {
  const { pair } = fixture;
  const target = join(fixture.dir, 'target.raw');
  await rm(target, { force: true });
  await writeFile(target, '');
  await truncate(target, fixture.sizeBytes);
  const port = tool === 'tcp' ? SINK_PORT : NBD_PORT;
  const server =
    tool === 'tcp'
      ? pair.b.spawn(process.execPath, [TCP_PROBE, 'sink', '--listen', `${pair.b.ip}:${port}`])
      : pair.b.spawn('qemu-nbd', qemuNbdArgs(pair.b.ip, port, target, isTls ? fixture.dir : null));
  let stderr = '';
  server.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString('utf8')).slice(-4096);
  });
  const route = await routeTo(pair, link, port);
  try {
    await waitForListener(pair.a, pair.b.ip, port);
    const args = clientArgs(fixture, tool, route, isTls);
    const startedMs = performance.now();
    const result = await pair.a.exec(args[0] ?? '', args.slice(1), {
      timeoutMs: fixture.timeoutMs,
    });
    const wallMs = performance.now() - startedMs;
    if (result.code !== 0) {
      throw new Error(
        `${args.join(' ')} exited ${result.code}: ${result.stderr}\nserver: ${stderr}`,
      );
    }
    return wallMs;
  } finally {
    await route.close();
    server.kill('SIGTERM');
    if (server.exitCode === null && server.signalCode === null) {
      await new Promise((resolve) => server.once('exit', resolve));
    }
    await rm(target, { force: true });
  }
}

function qemuNbdArgs(host: string, port: number, image: string, pskDir: string | null): string[] {
  const args = ['--cache=writeback', '-f', 'raw', '-t', '--shared=8'];
  args.push('-b', host, '-p', String(port), '-x', 'bench');
  if (pskDir !== null) {
    args.push('--object', `tls-creds-psk,id=tls0,endpoint=server,dir=${pskDir}`);
    args.push('--tls-creds', 'tls0');
  }
  return [...args, image];
}

function clientArgs(
  fixture: CopyFixture,
  tool: ReferenceTool,
  route: { host: string; port: number },
  isTls: boolean,
): string[] {
  const { sourcePath, sizeBytes, dir } = fixture;
  if (tool === 'tcp') {
    const target = `${route.host}:${route.port}`;
    return [process.execPath, TCP_PROBE, 'send', '--target', target, '--bytes', String(sizeBytes)];
  }
  if (tool === 'nbdcopy') {
    const uri = isTls
      ? `nbds://${PSK_IDENTITY}@${route.host}:${route.port}/bench?tls-psk-file=${join(dir, 'keys.psk')}`
      : `nbd://${route.host}:${route.port}/bench`;
    return ['nbdcopy', '--connections=4', '--flush', sourcePath, uri];
  }
  const file = [
    'driver=raw',
    'file.driver=nbd',
    'file.server.type=inet',
    `file.server.host=${route.host}`,
    `file.server.port=${route.port}`,
    'file.export=bench',
    ...(isTls ? ['file.tls-creds=tls0'] : []),
  ].join(',');
  const tls = isTls
    ? ['--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=${PSK_IDENTITY}`]
    : [];
  const convert = ['qemu-img', 'convert', '-n', '-f', 'raw', '-t', 'writeback', ...tls];
  return [...convert, '--target-image-opts', sourcePath, file];
}
