import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseVmConfig, stableMac, vmConfigOf } from '../../src/host/vm-config.js';
import { errorCodeOf } from '../../src/util/errors.js';

test('vm config: defaults, a stable unicast MAC per VM and NIC, and what is refused', () => {
  const config = vmConfigOf(
    'web1',
    ['web1-os'],
    { nics: [{ network: 'lan' }] },
    {
      kernel: null,
      initrd: null,
    },
  );
  assert.equal(config.memoryBytes, 512 * 1024 * 1024);
  assert.equal(config.cpus, 1);
  assert.equal(config.accel, 'auto');
  const mac = config.nics[0]?.mac ?? '';
  assert.equal(mac, stableMac('web1', 0), 'the same on every host');
  assert.notEqual(stableMac('web1', 1), mac);
  assert.notEqual(stableMac('web2', 0), mac);
  assert.equal(Number.parseInt(mac.slice(0, 2), 16) & 1, 0, 'unicast');
  const refuse = (settings: Parameters<typeof vmConfigOf>[2], pattern: RegExp): void =>
    assert.throws(
      () => vmConfigOf('web1', ['web1-os'], settings, { kernel: null, initrd: null }),
      (error) => errorCodeOf(error) === 'ERR_BAD_VM_CONFIG' && pattern.test(String(error)),
    );
  refuse({ memoryBytes: 1024 }, /memory 1024 bytes/);
  refuse({ cpus: 0 }, /cpus 0/);
  refuse({ nics: [{ network: 'lan', mac: '01:00:5e:00:00:01' }] }, /multicast/);
  refuse({ nics: [{ network: 'lan', mac: 'nope' }] }, /six hex octets/);
  refuse(
    {
      nics: [
        { network: 'lan', mac: '52:54:00:00:00:01' },
        { network: 'wan', mac: '52:54:00:00:00:01' },
      ],
    },
    /given to two NICs/,
  );
});

test('vm config: a version 1 vm.json (a home naming disks) reads with the defaults', () => {
  const config = parseVmConfig(
    { version: 1, name: 'db', disks: ['db-os'], createdAt: '2026-01-01T00:00:00.000Z' },
    'db/vm.json',
    'db',
  );
  assert.equal(config.version, 2);
  assert.deepEqual(config.nics, []);
  assert.equal(config.kernel, null);
  assert.throws(
    () => parseVmConfig({ version: 2, name: 'other', disks: ['x'] }, 'db/vm.json', 'db'),
    (error) => errorCodeOf(error) === 'ERR_BAD_DESCRIPTOR',
  );
});
