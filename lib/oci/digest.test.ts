import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createDigester, digestFromHash, digestOf, parseDigest, tryParseDigest } from './digest.js';
import { RegistryError } from './errors.js';

const HEX64 = '0123456789abcdef'.repeat(4);
const HEX128 = HEX64 + HEX64;

test('sha256 and sha512 digests with exact hex lengths parse', () => {
  assert.deepEqual(tryParseDigest(`sha256:${HEX64}`), { algorithm: 'sha256', hex: HEX64, value: `sha256:${HEX64}` });
  assert.deepEqual(tryParseDigest(`sha512:${HEX128}`), { algorithm: 'sha512', hex: HEX128, value: `sha512:${HEX128}` });
});

test('bad lengths, upper-case hex, other algorithms and junk are refused', () => {
  const bad = [
    '', 'sha256', 'sha256:', `sha256:${HEX64.slice(1)}`, `sha256:${HEX64}0`, `sha256:${HEX128}`,
    `sha512:${HEX64}`, `sha512:${HEX128.slice(2)}`, `sha256:${HEX64.toUpperCase()}`, `SHA256:${HEX64}`,
    `sha256:${HEX64.slice(1)}g`, `sha384:${'a'.repeat(96)}`, `md5:${'a'.repeat(32)}`, `sha256+b64u:${HEX64}`,
    ` sha256:${HEX64}`, `sha256:${HEX64} `, `sha256:${HEX64}\n`, `sha256 :${HEX64}`, `sha256::${HEX64}`, HEX64,
  ];
  for (const value of bad) {
    assert.equal(tryParseDigest(value), undefined, JSON.stringify(value));
    assert.throws(() => parseDigest(value), (err: unknown) => err instanceof RegistryError && err.code === 'DIGEST_INVALID' && err.status === 400, JSON.stringify(value));
  }
});

test('parseDigest returns the parsed digest and puts a truncated value in the error detail', () => {
  assert.equal(parseDigest(`sha256:${HEX64}`).hex, HEX64);
  const long = `sha256:${'z'.repeat(5000)}`;
  try {
    parseDigest(long);
    assert.fail('should throw');
  } catch (err) {
    assert.ok(err instanceof RegistryError);
    assert.deepEqual(err.detail, { digest: long.slice(0, 200) });
    assert.match(err.message, /sha256:<64 hex> or sha512:<128 hex>/);
  }
});

test('digestOf and the streaming digester agree with node:crypto', () => {
  const data = Buffer.from('hello, registry');
  const sha256 = createHash('sha256').update(data).digest('hex');
  const sha512 = createHash('sha512').update(data).digest('hex');
  assert.deepEqual(digestOf(data), { algorithm: 'sha256', hex: sha256, value: `sha256:${sha256}` });
  assert.equal(digestOf('hello, registry', 'sha512').value, `sha512:${sha512}`);
  const hash = createDigester('sha512');
  hash.update(data.subarray(0, 5));
  hash.update(data.subarray(5));
  assert.equal(digestFromHash('sha512', hash).value, `sha512:${sha512}`);
  // What digestOf produces always parses back.
  assert.ok(tryParseDigest(digestOf(Buffer.alloc(0)).value));
  assert.equal(digestOf(Buffer.alloc(0)).value, 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
});
