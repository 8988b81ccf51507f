import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { NAMESPACE_PATTERN, StorageLayout, UPLOAD_ID_PATTERN } from './layout.js';
import { parseDigest } from '../oci/digest.js';

const HEX = `ab${'0'.repeat(60)}cd`;
const digest = parseDigest(`sha256:${HEX}`);
const sha512 = parseDigest(`sha512:${'e'.repeat(128)}`);
const subject = parseDigest(`sha256:${'1'.repeat(64)}`);

test('hosted layout: content-addressed blobs, per-repository links, manifests, tags, referrers, uploads, temp', () => {
  const layout = new StorageLayout('/data');
  assert.equal(layout.root, '/data');
  assert.equal(layout.namespace, undefined);
  assert.equal(layout.blobsDir, '/data/blobs');
  assert.equal(layout.repositoriesDir, '/data/repositories');
  assert.equal(layout.uploadsDir, '/data/_uploads');
  assert.equal(layout.tmpDir, '/data/_tmp/_hosted');
  assert.equal(layout.blobPath(digest), `/data/blobs/sha256/ab/${HEX}`);
  assert.equal(layout.blobPath(sha512), `/data/blobs/sha512/ee/${'e'.repeat(128)}`);
  assert.equal(layout.repositoryDir('team/app'), '/data/repositories/team/app');
  assert.equal(layout.layerLinkPath('team/app', digest), `/data/repositories/team/app/_layers/sha256/${HEX}`);
  assert.equal(layout.layerLinksDir('team/app', 'sha512'), '/data/repositories/team/app/_layers/sha512');
  assert.equal(layout.manifestsDir('a'), '/data/repositories/a/_manifests');
  assert.equal(layout.manifestRevisionPath('a', digest), `/data/repositories/a/_manifests/revisions/sha256/${HEX}`);
  assert.equal(layout.manifestRevisionsDir('a', 'sha256'), '/data/repositories/a/_manifests/revisions/sha256');
  assert.equal(layout.tagsDir('a'), '/data/repositories/a/_manifests/tags');
  assert.equal(layout.tagPath('a', 'v1.0'), '/data/repositories/a/_manifests/tags/v1.0');
  assert.equal(layout.referrersPrefix('a', subject), `repositories/a/_referrers/sha256/${'1'.repeat(64)}/`);
  assert.equal(layout.referrerKey('a', subject, digest), `repositories/a/_referrers/sha256/${'1'.repeat(64)}/sha256-${HEX}.json`);
  const id = '0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b';
  assert.equal(layout.uploadDataPath(id), `/data/_uploads/${id}/data`);
  assert.equal(layout.uploadStatePath(id), `/data/_uploads/${id}/state.json`);
});

test('a cache namespace moves repositories and temp files, never blobs or uploads', () => {
  const layout = new StorageLayout('/data', { namespace: 'quay.io' });
  assert.equal(layout.namespace, 'quay.io');
  assert.equal(layout.repositoriesDir, '/data/cache/quay.io');
  assert.equal(layout.tmpDir, '/data/_tmp/quay.io');
  assert.equal(layout.blobsDir, '/data/blobs');
  assert.equal(layout.uploadsDir, '/data/_uploads');
  assert.equal(layout.tagPath('podman/hello', 'latest'), '/data/cache/quay.io/podman/hello/_manifests/tags/latest');
  assert.equal(new StorageLayout('/data', { namespace: 'registry.local:5000' }).tmpDir, '/data/_tmp/registry.local:5000');
});

test('namespaces must be host[:port]: no traversal, no separators, never the hosted temp dir', () => {
  for (const ns of ['quay.io', 'docker.io', 'localhost', 'registry-1.docker.io', '127.0.0.1:5000', 'a']) {
    assert.equal(NAMESPACE_PATTERN.test(ns), true, ns);
    assert.doesNotThrow(() => new StorageLayout('/data', { namespace: ns }));
  }
  for (const ns of ['', '.', '..', '../x', 'a/b', 'Quay.io', '_hosted', 'a..b', '.a', 'a.', '-a', 'a:', 'a:123456', 'a\0b', 'a b', ':5000']) {
    assert.equal(NAMESPACE_PATTERN.test(ns), false, JSON.stringify(ns));
    assert.throws(() => new StorageLayout('/data', { namespace: ns }), /invalid cache namespace/, JSON.stringify(ns));
  }
});

test('upload ids are lower-case UUIDs only', () => {
  assert.equal(UPLOAD_ID_PATTERN.test('0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b'), true);
  assert.equal(UPLOAD_ID_PATTERN.test(randomUUID()), true);
  for (const id of ['', '..', '../../etc', '0B6A3F1E-2C4D-4E5F-8A9B-0C1D2E3F4A5B', '0b6a3f1e2c4d4e5f8a9b0c1d2e3f4a5b',
    '0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b/..', ' 0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b', '0b6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5', 'zb6a3f1e-2c4d-4e5f-8a9b-0c1d2e3f4a5b']) {
    assert.equal(UPLOAD_ID_PATTERN.test(id), false, JSON.stringify(id));
  }
});

test('storage keys: the same layout as the paths, relative to the root', () => {
  for (const layout of [new StorageLayout('/data'), new StorageLayout('/data', { namespace: 'quay.io' })]) {
    const rel = (path: string) => path.slice('/data/'.length);
    assert.equal(layout.blobKey(digest), rel(layout.blobPath(digest)));
    assert.equal(layout.repositoryPrefix('team/app'), `${rel(layout.repositoryDir('team/app'))}/`);
    assert.equal(layout.layerLinkKey('team/app', digest), rel(layout.layerLinkPath('team/app', digest)));
    assert.equal(layout.layerLinksPrefix('a', 'sha512'), `${rel(layout.layerLinksDir('a', 'sha512'))}/`);
    assert.equal(layout.manifestRevisionKey('a', digest), rel(layout.manifestRevisionPath('a', digest)));
    assert.equal(layout.manifestRevisionsPrefix('a', 'sha256'), `${rel(layout.manifestRevisionsDir('a', 'sha256'))}/`);
    assert.equal(layout.tagsPrefix('a'), `${rel(layout.tagsDir('a'))}/`);
    assert.equal(layout.tagKey('a', 'v1.0'), rel(layout.tagPath('a', 'v1.0')));
  }
  assert.equal(new StorageLayout('/data', { namespace: 'quay.io' }).repositoriesPrefix, 'cache/quay.io/');
  assert.equal(new StorageLayout('/data').repositoriesPrefix, 'repositories/');
});

test('fill lease names: one component per repository name, per upstream namespace', () => {
  const layout = new StorageLayout('/data', { namespace: 'registry-1.docker.io' });
  assert.equal(layout.manifestFillLease('library/alpine', digest), `fills/manifests/registry-1.docker.io/library%2Falpine/sha256-${HEX}`);
  assert.equal(layout.tagFillLease('library/alpine', 'v1.0'), 'fills/tags/registry-1.docker.io/library%2Falpine/v1.0');
  assert.notEqual(layout.tagFillLease('a/b', 'c'), layout.tagFillLease('a', 'b/c'));
  assert.equal(new StorageLayout('/data').tagFillLease('a', 'latest'), 'fills/tags/_hosted/a/latest');
});
