import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkName, isValidName } from '../../src/host/names.js';

test('names: accepts the documented alphabet', () => {
  for (const name of ['vm1', 'a', 'A.b_c-d', '0', '_x', 'x'.repeat(64), 'disk.raw', 'x..y']) {
    assert.equal(isValidName(name), true, name);
  }
});

test('names: refuses what would be unsafe as a file, URI or shell word', () => {
  const bad = [
    '',
    '.',
    '..',
    '.hidden',
    '-rf',
    'a/b',
    'a b',
    'é',
    'x'.repeat(65),
    'a:b',
    'a?b',
    '../x',
  ];
  for (const name of bad) assert.equal(isValidName(name), false, name);
});

test('names: the error has a stable code and says what is accepted', () => {
  assert.throws(
    () => checkName('../etc', 'disk'),
    (error: unknown) => {
      const { code, message } = error as { code: string; message: string };
      assert.equal(code, 'ERR_BAD_NAME');
      assert.match(message, /"\.\.\/etc" is not a valid disk name/);
      assert.match(message, /1 to 64 characters/);
      return true;
    },
  );
});
