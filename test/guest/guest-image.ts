import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rename,
  rm,
  stat,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';
import { GUEST_DRIVERS, guestModules } from './kernel-modules.js';
import { type CpioEntry, newcArchive } from './newc-cpio.js';

/**
 * The test guest's kernel and initramfs, built from Debian packages on first use and cached.
 *
 * Kernel: Debian's cloud kernel (`linux-image-cloud-amd64` names the versioned package), small
 * and quick to boot under TCG. Initramfs: busybox-static, the virtio modules the kernel does
 * not build in (kernel-modules.ts), and init.sh as /init. Nothing else: no root filesystem.
 *
 * Cache: one directory per `<kernel release>-<hash of what goes into the initramfs>` under
 * FERRY_GUEST_CACHE (default /var/cache/ferry-guest), so a new kernel or a changed init.sh
 * builds a new image. Concurrent test processes may both build; each builds in its own temp
 * directory and renames it into place, and a rename that finds the directory there already
 * means another process won, so the loser's copy is dropped. Old entries are never removed.
 */
export interface GuestImage {
  /** Path of the kernel (bzImage), for `qemu -kernel`. */
  readonly kernel: string;
  /** Path of the gzip'ed newc initramfs, for `qemu -initrd`. */
  readonly initrd: string;
}

const KERNEL_META_PACKAGE = 'linux-image-cloud-amd64';
const BUSYBOX_PACKAGE = 'busybox-static';
/** Bump when the way the image is put together changes, so old cache entries are not used
 * (init.sh, the busybox version and the driver list are in the key already). */
const LAYOUT_VERSION = 1;
const INIT_SCRIPT_URL = new URL('../../../test/guest/init.sh', import.meta.url);

const run = promisify(execFile);

export async function guestImage(): Promise<GuestImage> {
  const cacheRoot = process.env.FERRY_GUEST_CACHE ?? '/var/cache/ferry-guest';
  const init = await readFile(INIT_SCRIPT_URL);
  const { kernelPackage, busyboxVersion } = await aptCandidates();
  const release = kernelPackage.slice('linux-image-'.length);
  const hash = createHash('sha256')
    .update(`layout ${LAYOUT_VERSION}\nbusybox ${busyboxVersion}\n`)
    .update(JSON.stringify(GUEST_DRIVERS))
    .update(init)
    .digest('hex')
    .slice(0, 16);
  const dir = join(cacheRoot, `${release}-${hash}`);
  const image = { kernel: join(dir, 'vmlinuz'), initrd: join(dir, 'initrd.gz') };
  if (await exists(image.initrd)) return image;

  await mkdir(cacheRoot, { recursive: true });
  const work = await mkdtemp(join(cacheRoot, '.build-'));
  try {
    const out = join(work, 'image');
    await build(work, out, kernelPackage, release, init);
    try {
      await rename(out, dir);
    } catch (err) {
      // Another process renamed its build into place first; its copy is as good as ours.
      if (!(await exists(image.initrd))) throw err;
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
  return image;
}

async function build(
  work: string,
  out: string,
  kernelPackage: string,
  release: string,
  init: Buffer,
): Promise<void> {
  const debs = join(work, 'debs');
  const root = join(work, 'root');
  await mkdir(debs);
  await mkdir(root);
  await mkdir(out);
  await aptDownload(debs, [kernelPackage, BUSYBOX_PACKAGE]);
  for (const deb of await readdir(debs)) {
    if (deb.endsWith('.deb')) await run('dpkg-deb', ['-x', join(debs, deb), root]);
  }

  const config = await readFile(join(root, 'boot', `config-${release}`), 'utf8');
  // Bookworm installs modules under /lib, later releases under /usr/lib.
  let moduleDir = join(root, 'lib', 'modules', release);
  if (!(await exists(moduleDir))) moduleDir = join(root, 'usr', 'lib', 'modules', release);
  const modules = await guestModules(config, moduleDir);

  const entries: CpioEntry[] = [
    { kind: 'dir', path: 'bin' },
    { kind: 'dir', path: 'sbin' },
    { kind: 'dir', path: 'dev' },
    // The kernel opens /dev/console for init's stdio before /init can mount devtmpfs.
    { kind: 'char', path: 'dev/console', major: 5, minor: 1 },
    { kind: 'dir', path: 'proc' },
    { kind: 'dir', path: 'sys' },
    { kind: 'dir', path: 'tmp', perm: 0o1777 },
    { kind: 'dir', path: 'modules' },
    { kind: 'file', path: 'init', data: init, perm: 0o755 },
    {
      kind: 'file',
      path: 'bin/busybox',
      data: await readFile(await busyboxPath(root)),
      perm: 0o755,
    },
    // init.sh's #! needs /bin/sh before it runs `busybox --install`.
    { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
    {
      kind: 'file',
      path: 'modules/order',
      data: Buffer.from(modules.map((m) => m.name + '\n').join('')),
    },
  ];
  for (const m of modules) {
    entries.push({ kind: 'file', path: `modules/${m.name}.ko`, data: await readFile(m.path) });
  }
  await writeFile(join(out, 'initrd.gz'), gzipSync(newcArchive(entries)));
  await copyFile(join(root, 'boot', `vmlinuz-${release}`), join(out, 'vmlinuz'));
  const manifest = { kernelPackage, release, modules: modules.map((m) => m.name) };
  await writeFile(join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
}

/** busybox-static installs /bin/busybox (bookworm) or /usr/bin/busybox (later releases). */
async function busyboxPath(root: string): Promise<string> {
  for (const candidate of [join(root, 'bin', 'busybox'), join(root, 'usr', 'bin', 'busybox')]) {
    if (await exists(candidate)) return candidate;
  }
  throw new Error(`${BUSYBOX_PACKAGE} holds no busybox binary`);
}

/** The candidates' control fields by package; runs `apt-get update` once if the lists lack one. */
async function aptShow(packages: readonly string[]): Promise<Map<string, Map<string, string>>> {
  const show = () => run('apt-cache', ['show', '--no-all-versions', ...packages]);
  const { stdout } = await show().catch(async () => {
    await aptUpdate();
    return show();
  });
  const stanzas = new Map<string, Map<string, string>>();
  for (const stanza of stdout.split(/\n\n+/)) {
    const fields = new Map<string, string>();
    for (const match of stanza.matchAll(/^([\w-]+): (.*)$/gm)) fields.set(match[1]!, match[2]!);
    const name = fields.get('Package');
    if (name !== undefined) stanzas.set(name, fields);
  }
  return stanzas;
}

/** The package `linux-image-cloud-amd64` depends on, and busybox-static's version. */
async function aptCandidates(): Promise<{ kernelPackage: string; busyboxVersion: string }> {
  const stanzas = await aptShow([KERNEL_META_PACKAGE, BUSYBOX_PACKAGE]);
  const depends = (stanzas.get(KERNEL_META_PACKAGE)?.get('Depends') ?? '')
    .split(/[,|]/)
    .map((d) => d.trim().split(' ')[0]!);
  const kernelPackage = depends.find((d) => /^linux-image-\d\S*$/.test(d));
  const busyboxVersion = stanzas.get(BUSYBOX_PACKAGE)?.get('Version');
  if (kernelPackage === undefined || busyboxVersion === undefined) {
    throw new Error(
      `apt-cache show ${KERNEL_META_PACKAGE} ${BUSYBOX_PACKAGE}: no kernel package or version`,
    );
  }
  return { kernelPackage, busyboxVersion };
}

async function aptDownload(dir: string, packages: readonly string[]): Promise<void> {
  const download = () => run('apt-get', ['download', ...packages], { cwd: dir });
  await download().catch(async () => {
    await aptUpdate();
    return download();
  });
}

async function aptUpdate(): Promise<void> {
  await run('apt-get', ['update'], { maxBuffer: 16 * 1024 * 1024 });
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
