import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatStorageLocation, parseStorageLocation } from './location.js';

test('a plain path is the filesystem driver, resolved against the working directory', () => {
  assert.deepEqual(parseStorageLocation('/var/lib/registry'), { kind: 'filesystem', root: '/var/lib/registry' });
  assert.deepEqual(parseStorageLocation('/var/lib/registry/'), { kind: 'filesystem', root: '/var/lib/registry' });
  assert.deepEqual(parseStorageLocation('./data', '/srv'), { kind: 'filesystem', root: '/srv/data' });
  assert.deepEqual(parseStorageLocation('data:1', '/srv'), { kind: 'filesystem', root: '/srv/data:1' });
});

test('s3://BUCKET[/PREFIX] is the S3 driver; trailing slashes are dropped', () => {
  assert.deepEqual(parseStorageLocation('s3://stevedore'), { kind: 's3', bucket: 'stevedore', prefix: '' });
  assert.deepEqual(parseStorageLocation('s3://stevedore/'), { kind: 's3', bucket: 'stevedore', prefix: '' });
  assert.deepEqual(parseStorageLocation('s3://my.bucket-1/team/registry/'), { kind: 's3', bucket: 'my.bucket-1', prefix: 'team/registry' });
  assert.deepEqual(parseStorageLocation('S3://abc/x'), { kind: 's3', bucket: 'abc', prefix: 'x' });
});

test('bad locations are refused with a message naming the problem', () => {
  assert.throws(() => parseStorageLocation(''), /empty/);
  assert.throws(() => parseStorageLocation('gs://bucket'), /unsupported storage location/);
  assert.throws(() => parseStorageLocation('s3://'), /invalid S3 bucket name ""/);
  assert.throws(() => parseStorageLocation('s3://ab'), /invalid S3 bucket name "ab"/);
  assert.throws(() => parseStorageLocation('s3://Bucket'), /invalid S3 bucket name/);
  assert.throws(() => parseStorageLocation('s3://-bucket'), /invalid S3 bucket name/);
  assert.throws(() => parseStorageLocation('s3://a..b'), /invalid S3 bucket name/);
  assert.throws(() => parseStorageLocation('s3://192.168.1.1'), /invalid S3 bucket name/);
  assert.throws(() => parseStorageLocation(`s3://${'a'.repeat(64)}`), /invalid S3 bucket name/);
  assert.throws(() => parseStorageLocation('s3://bucket/a//b'), /invalid S3 key prefix/);
  assert.throws(() => parseStorageLocation('s3://bucket/a/../b'), /invalid S3 key prefix/);
  assert.throws(() => parseStorageLocation('s3://bucket//a'), /invalid S3 key prefix/);
});

test('formatStorageLocation gives back the canonical text', () => {
  for (const text of ['s3://stevedore', 's3://stevedore/a/b', '/var/lib/registry']) {
    assert.equal(formatStorageLocation(parseStorageLocation(text)), text);
  }
});
