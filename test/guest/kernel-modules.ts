import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Which kernel modules the test guest must load, and in what order. Debian's kernel package
 * ships no modules.dep (depmod makes it on install), so each module's dependencies are read
 * from its own `.modinfo` section (`depends=a,b`), the list modpost wrote and depmod copies.
 * Whether a driver is a module at all comes from the kernel's config: `=y` is built in and
 * needs nothing, `=m` is a module to load, and anything else is an error naming the option.
 */

/** The drivers the guest needs: the virtio PCI transport, then its disk and its NIC. */
export const GUEST_DRIVERS: readonly { readonly module: string; readonly config: string }[] = [
  { module: 'virtio_pci', config: 'CONFIG_VIRTIO_PCI' },
  { module: 'virtio_blk', config: 'CONFIG_VIRTIO_BLK' },
  { module: 'virtio_net', config: 'CONFIG_VIRTIO_NET' },
];

export interface GuestModule {
  /** Name with underscores, as `depends=` and insmod's errors spell it. */
  readonly name: string;
  /** Absolute path of the `.ko` in the extracted package. */
  readonly path: string;
}

/**
 * The modules to insmod for `drivers`, each after its dependencies. `configText` is the
 * kernel's `/boot/config-*`; `moduleDir` is its `lib/modules/<release>` directory.
 */
export async function guestModules(
  configText: string,
  moduleDir: string,
  drivers: readonly { readonly module: string; readonly config: string }[] = GUEST_DRIVERS,
): Promise<GuestModule[]> {
  const config = parseConfig(configText);
  const files = await indexModules(join(moduleDir, 'kernel'));
  const ordered: GuestModule[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();

  const visit = async (name: string): Promise<void> => {
    if (done.has(name)) return;
    if (visiting.has(name)) throw new Error(`module dependency cycle through ${name}`);
    visiting.add(name);
    const path = files.get(name);
    if (path === undefined) throw new Error(`module ${name}.ko not found under ${moduleDir}`);
    for (const dep of moduleDepends(await readFile(path))) await visit(dep);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, path });
  };

  for (const driver of drivers) {
    const value = config.get(driver.config);
    if (value === 'y') continue;
    if (value !== 'm') {
      throw new Error(`kernel config has ${driver.config}=${value ?? '(unset)'}, need y or m`);
    }
    await visit(driver.module);
  }
  return ordered;
}

function parseConfig(text: string): Map<string, string> {
  const options = new Map<string, string>();
  for (const line of text.split('\n')) {
    const match = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (match) options.set(match[1]!, match[2]!);
  }
  return options;
}

/** Module name (dashes folded to underscores, as the kernel does) to its `.ko` path. */
async function indexModules(dir: string): Promise<Map<string, string>> {
  const files = new Map<string, string>();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile() || !entry.name.endsWith('.ko')) continue;
    files.set(entry.name.slice(0, -3).replaceAll('-', '_'), join(entry.parentPath, entry.name));
  }
  return files;
}

/**
 * The `depends=` entry of a module's `.modinfo` section: NUL-separated `key=value` strings, so
 * the entry is found as "\0depends=" up to the next NUL. Compressed modules are not handled:
 * Debian's 6.1 kernels ship them plain (CONFIG_MODULE_COMPRESS_NONE).
 */
export function moduleDepends(ko: Buffer): string[] {
  const key = Buffer.from('\0depends=');
  const start = ko.indexOf(key);
  if (start < 0) throw new Error('module has no depends= in .modinfo (compressed?)');
  const from = start + key.length;
  const value = ko.toString('latin1', from, ko.indexOf(0, from));
  return value === '' ? [] : value.split(',').map((name) => name.replaceAll('-', '_'));
}
