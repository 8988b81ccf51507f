import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRegistryPath } from './route.js';
import { RegistryError } from './errors.js';

test('parseRegistryPath maps every endpoint, with names that span segments', () => {
  assert.deepEqual(parseRegistryPath('/v2/'), { kind: 'base' });
  assert.deepEqual(parseRegistryPath('/v2/_catalog'), { kind: 'catalog' });
  assert.deepEqual(parseRegistryPath('/v2/a/b/c/manifests/latest'), { kind: 'manifest', name: 'a/b/c', reference: 'latest' });
  assert.deepEqual(parseRegistryPath('/v2/x/manifests/y/manifests/v1'), { kind: 'manifest', name: 'x/manifests/y', reference: 'v1' });
  assert.deepEqual(parseRegistryPath('/v2/a/blobs/uploads/'), { kind: 'upload', name: 'a', uploadId: undefined });
  assert.deepEqual(parseRegistryPath('/v2/a/blobs/uploads'), { kind: 'upload', name: 'a', uploadId: undefined });
  assert.deepEqual(parseRegistryPath('/v2/a/blobs/uploads/abc'), { kind: 'upload', name: 'a', uploadId: 'abc' });
  assert.deepEqual(parseRegistryPath('/v2/a/blobs/sha256:00'), { kind: 'blob', name: 'a', digest: 'sha256:00' });
  assert.deepEqual(parseRegistryPath('/v2/a/tags/list'), { kind: 'tags', name: 'a' });
  assert.deepEqual(parseRegistryPath('/v2/a/referrers/sha256:00'), { kind: 'referrers', name: 'a', digest: 'sha256:00' });
});

test('parseRegistryPath refuses path tricks as NAME_INVALID before anything reaches a path', () => {
  for (const path of ['/v2/../etc/manifests/x', '/v2/a/%2e%2e/manifests/x', '/v2/a%2fb/manifests/x', '/v2//a/manifests/x',
    '/v2/a//b/blobs/sha256:00', '/v2/A/tags/list', '/v2/a/\0/tags/list', '/v2/_x/tags/list', '/v2/a/./b/tags/list']) {
    assert.throws(() => parseRegistryPath(path), (err: unknown) => err instanceof RegistryError && err.code === 'NAME_INVALID', path);
  }
});

test('parseRegistryPath answers unknown shapes with 404 NAME_UNKNOWN', () => {
  assert.throws(() => parseRegistryPath('/v2/a/b'), (err: unknown) => err instanceof RegistryError && err.code === 'NAME_UNKNOWN' && err.status === 404);
});
