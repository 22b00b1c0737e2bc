import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type QemuSpec, qemuArgs } from '../../../src/host/qemu/qemu-command-line.js';
import { QemuErrorCode } from '../../../src/host/qemu/qemu-errors.js';
import { makeTempDir } from '../temp-dir.js';
import { launchForTest, missingTool, startQemuNbd, testSpec } from './qemu-harness.js';

const MIB = 1024 * 1024;

const spec: QemuSpec = {
  name: 'web1',
  memoryBytes: 2048 * MIB,
  cpus: 2,
  accel: 'kvm',
  kernel: '/vm/web1/vmlinuz',
  initrd: '/vm/web1/initrd.img',
  append: 'console=ttyS0 root=/dev/vda',
  disks: [
    { node: 'disk0', nbdSocket: '/run/ferry/nbd.sock', exportName: 'web1-root', bus: 'virtio' },
    {
      node: 'disk1',
      nbdSocket: '/run/ferry/nbd.sock',
      exportName: 'web1-data',
      bus: 'virtio',
      reconnectDelaySeconds: 10,
    },
  ],
  nics: [{ id: 'net0', tap: 'tap-web1', mac: '52:54:00:AB:CD:01' }],
  qmpSocket: '/run/ferry/vms/web1/qmp.sock',
  serialLog: '/var/lib/ferry/vms/web1/serial,1.log',
  pidFile: '/run/ferry/vms/web1/qemu.pid',
  incoming: 'defer',
};

test('qemu args: golden argv for a two-disk, one-NIC VM waiting for a migration', () => {
  assert.deepEqual(qemuArgs(spec), [
    '-name',
    'guest=web1',
    '-machine',
    'q35',
    '-accel',
    'kvm',
    '-m',
    '2048M',
    '-smp',
    '2',
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-chardev',
    'file,id=serial0,path=/var/lib/ferry/vms/web1/serial,,1.log,append=on',
    '-serial',
    'chardev:serial0',
    '-qmp',
    'unix:/run/ferry/vms/web1/qmp.sock,server=on,wait=off',
    '-pidfile',
    '/run/ferry/vms/web1/qemu.pid',
    '-daemonize',
    '-kernel',
    '/vm/web1/vmlinuz',
    '-initrd',
    '/vm/web1/initrd.img',
    '-append',
    'console=ttyS0 root=/dev/vda',
    '-blockdev',
    '{"driver":"nbd","node-name":"disk0","server":{"type":"unix","path":"/run/ferry/nbd.sock"},"export":"web1-root"}',
    '-device',
    'virtio-blk-pci,drive=disk0,id=disk0-blk',
    '-blockdev',
    '{"driver":"nbd","node-name":"disk1","server":{"type":"unix","path":"/run/ferry/nbd.sock"},"export":"web1-data","reconnect-delay":10}',
    '-device',
    'virtio-blk-pci,drive=disk1,id=disk1-blk',
    '-netdev',
    'tap,id=net0,ifname=tap-web1,script=no,downscript=no',
    '-device',
    'virtio-net-pci,netdev=net0,mac=52:54:00:ab:cd:01,id=net0-nic',
    '-incoming',
    'defer',
  ]);
});

test('qemu args: a spec QEMU would refuse or misread is an error naming the field', () => {
  const cases: [Partial<QemuSpec>, RegExp][] = [
    [{ memoryBytes: 1000 }, /memoryBytes must be a positive multiple of 1 MiB/],
    [{ cpus: 0 }, /cpus must be an integer/],
    [{ qmpSocket: 'qmp.sock' }, /qmpSocket must be an absolute path/],
    [
      { nics: [{ id: 'net0', tap: 'tap0', mac: '53:54:00:00:00:01' }] },
      /nics\[0\]\.mac is multicast/,
    ],
    [{ nics: [{ id: '0net', tap: 'tap0', mac: '52:54:00:00:00:01' }] }, /nics\[0\]\.id must start/],
    [
      { nics: [{ id: 'disk0', tap: 'tap0', mac: '52:54:00:00:00:01' }] },
      /nics\[0\]\.id disk0 is used twice/,
    ],
  ];
  for (const [overrides, message] of cases) {
    assert.throws(() => qemuArgs({ ...spec, ...overrides }), {
      code: QemuErrorCode.BadSpec,
      message,
    });
  }
  const { kernel, ...kernelLess } = spec;
  assert.ok(kernel);
  assert.throws(() => qemuArgs(kernelLess), {
    code: QemuErrorCode.BadSpec,
    message: /initrd needs a kernel/,
  });
});

test('qemu args: real QEMU accepts them: NBD disks in order, NIC on a tap, QMP answers', async (t) => {
  const skip = missingTool('qemu-system-x86_64', 'qemu-nbd');
  if (skip !== undefined) return t.skip(skip);
  const dir = await makeTempDir('ferry-qemu-');
  const root = await startQemuNbd(t, dir, 'root');
  const data = await startQemuNbd(t, dir, 'data', 2 * MIB);
  // As root, QEMU creates a tap that does not exist, and it goes away with QEMU.
  const canTap = process.getuid?.() === 0;
  const tap = `ferryt${process.pid % 100_000}`;
  const qemu = await launchForTest(
    t,
    testSpec(dir, 'argscheck', {
      startPaused: true,
      disks: [
        { node: 'disk0', nbdSocket: root.socket, exportName: 'root', bus: 'virtio' },
        { node: 'disk1', nbdSocket: data.socket, exportName: 'data', bus: 'virtio' },
      ],
      nics: canTap ? [{ id: 'net0', tap, mac: '52:54:00:12:34:56' }] : [],
    }),
  );
  assert.equal(await qemu.status(), 'prelaunch');
  const nodes =
    await qemu.qmp.execute<
      { 'node-name': string; drv: string; image: { 'virtual-size': number } }[]
    >('query-named-block-nodes');
  const sizes = Object.fromEntries(
    nodes.filter((n) => n.drv === 'nbd').map((n) => [n['node-name'], n.image['virtual-size']]),
  );
  assert.deepEqual(sizes, { disk0: MIB, disk1: 2 * MIB });
  // PCI order is creation order: disk0 (vda) comes before disk1 (vdb).
  const pci =
    await qemu.qmp.execute<{ devices: { slot: number; qdev_id: string }[] }[]>('query-pci');
  const ids = (pci[0]?.devices ?? []).map((d) => d.qdev_id).filter((id) => id !== '');
  assert.deepEqual(
    ids,
    canTap ? ['disk0-blk', 'disk1-blk', 'net0-nic'] : ['disk0-blk', 'disk1-blk'],
  );
  if (canTap) {
    const mac = await qemu.qmp.execute('qom-get', {
      path: '/machine/peripheral/net0-nic',
      property: 'mac',
    });
    assert.equal(mac, '52:54:00:12:34:56');
  }
  assert.equal(await qemu.quit(5_000), 'quit');
});
