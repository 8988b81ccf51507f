import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_NAME_LENGTH, isValidName, isValidTag, parseReference, parseRepositoryName, parseTag } from './reference.js';
import { RegistryError } from './errors.js';

const HEX64 = 'a'.repeat(64);

function isCode(code: string, status: number) {
  return (err: unknown) => err instanceof RegistryError && err.code === code && err.status === status;
}

test('repository names follow the spec grammar: lower-case components joined by / with . _ __ and -+ separators', () => {
  for (const name of ['a', 'library/alpine', 'a/b/c/d', 'my-app', 'my--app', 'my__app', 'my_app', 'my.app',
    'a0/9z', 'team/app.v2/x-y_z', '0', 'a/manifests/b', 'blobs']) {
    assert.equal(isValidName(name), true, name);
    assert.equal(parseRepositoryName(name), name);
  }
  for (const name of ['', 'A', 'Library/alpine', 'a/', '/a', 'a//b', 'a/../b', '..', '.', 'a/./b', 'a..b', 'a___b', 'a._b',
    '-a', 'a-', '_a', 'a_', '.a', 'a.', 'a b', 'a%2fb', 'a%2e%2e', 'a\0b', 'a:b', 'a@b', 'a/_layers', 'é']) {
    assert.equal(isValidName(name), false, JSON.stringify(name));
    assert.throws(() => parseRepositoryName(name), isCode('NAME_INVALID', 400), JSON.stringify(name));
  }
});

test('repository names are capped at 255 characters', () => {
  assert.equal(MAX_NAME_LENGTH, 255);
  const longest = `${'a'.repeat(127)}/${'b'.repeat(127)}`;
  assert.equal(longest.length, 255);
  assert.equal(isValidName(longest), true);
  assert.equal(isValidName(`${longest}c`), false);
  assert.throws(() => parseRepositoryName('a'.repeat(256)), isCode('NAME_INVALID', 400));
});

test('a NAME_INVALID error carries the (truncated) name as detail', () => {
  try {
    parseRepositoryName('X'.repeat(1000));
    assert.fail('should throw');
  } catch (err) {
    assert.ok(err instanceof RegistryError);
    assert.deepEqual(err.detail, { name: 'X'.repeat(300) });
  }
});

test('tags: [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}, at most 128 characters', () => {
  for (const tag of ['latest', 'v1.0.0', 'V1', '_private', '1', 'a-b_c.d', 'x'.repeat(128), `_${'-'.repeat(127)}`]) {
    assert.equal(isValidTag(tag), true, tag);
    assert.equal(parseTag(tag), tag);
  }
  for (const tag of ['', '.hidden', '-dash', 'x'.repeat(129), 'a/b', 'a:b', 'a@b', 'a b', 'a+b', 'tag\n', '..', 'é']) {
    assert.equal(isValidTag(tag), false, JSON.stringify(tag));
    assert.throws(() => parseTag(tag), isCode('MANIFEST_INVALID', 400), JSON.stringify(tag));
  }
});

test('parseReference: a tag, a digest, or an error that is never a 500', () => {
  assert.deepEqual(parseReference('latest'), { kind: 'tag', tag: 'latest' });
  const ref = parseReference(`sha256:${HEX64}`);
  assert.equal(ref.kind, 'digest');
  assert.equal(ref.kind === 'digest' && ref.digest.value, `sha256:${HEX64}`);
  const sha512 = parseReference(`sha512:${'b'.repeat(128)}`);
  assert.equal(sha512.kind === 'digest' && sha512.digest.algorithm, 'sha512');
  // Anything with a colon is meant as a digest: malformed ones are DIGEST_INVALID.
  for (const bad of ['sha256:abc', `sha256:${'A'.repeat(64)}`, `md5:${HEX64}`, 'sha256:', ':latest', `sha256:${HEX64}:x`]) {
    assert.throws(() => parseReference(bad), isCode('DIGEST_INVALID', 400), bad);
  }
  for (const bad of ['', '.x', 'x'.repeat(129), 'a/b', 'a@b']) {
    assert.throws(() => parseReference(bad), isCode('MANIFEST_INVALID', 400), bad);
  }
});
