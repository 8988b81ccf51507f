import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MANIFEST_MEDIA_TYPES, MediaType, acceptsManifest, bareMediaType, isIndexMediaType } from './media-types.js';

test('the four manifest types are known; the empty descriptor type is not a manifest type', () => {
  assert.deepEqual([...MANIFEST_MEDIA_TYPES].sort(), [
    'application/vnd.docker.distribution.manifest.list.v2+json',
    'application/vnd.docker.distribution.manifest.v2+json',
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.oci.image.manifest.v1+json',
  ]);
  assert.equal(MANIFEST_MEDIA_TYPES.has(MediaType.OciEmpty), false);
  assert.equal(isIndexMediaType(MediaType.OciIndex), true);
  assert.equal(isIndexMediaType(MediaType.DockerManifestList), true);
  assert.equal(isIndexMediaType(MediaType.OciManifest), false);
  assert.equal(isIndexMediaType(MediaType.DockerManifest), false);
});

test('bareMediaType drops parameters and case', () => {
  assert.equal(bareMediaType('application/vnd.oci.image.manifest.v1+json'), MediaType.OciManifest);
  assert.equal(bareMediaType('Application/VND.OCI.Image.Manifest.v1+JSON; charset=utf-8'), MediaType.OciManifest);
  assert.equal(bareMediaType('  application/json ;q=0.5'), 'application/json');
  assert.equal(bareMediaType(''), '');
});

test('acceptsManifest: no preference serves any type', () => {
  for (const accept of [undefined, '*/*', 'application/json', 'text/plain, application/json', '', []]) {
    assert.equal(acceptsManifest(accept, MediaType.OciIndex), true, JSON.stringify(accept));
  }
});

test('acceptsManifest: named types admit only themselves (distribution answers 404 otherwise)', () => {
  assert.equal(acceptsManifest(MediaType.OciManifest, MediaType.OciManifest), true);
  assert.equal(acceptsManifest(MediaType.DockerManifest, MediaType.OciManifest), false);
  assert.equal(acceptsManifest(`${MediaType.DockerManifest}, ${MediaType.DockerManifestList}`, MediaType.OciIndex), false);
  assert.equal(acceptsManifest(`${MediaType.DockerManifest}, ${MediaType.OciIndex};q=0.9`, MediaType.OciIndex), true);
  // Several Accept headers arrive as an array.
  assert.equal(acceptsManifest([MediaType.DockerManifest, MediaType.OciManifest], MediaType.OciManifest), true);
  assert.equal(acceptsManifest([MediaType.DockerManifest, 'application/json'], MediaType.OciManifest), false);
  // A wildcard next to named types still admits everything.
  assert.equal(acceptsManifest(`${MediaType.DockerManifest}, */*`, MediaType.OciIndex), true);
  // Case and parameters do not matter.
  assert.equal(acceptsManifest('APPLICATION/VND.OCI.IMAGE.MANIFEST.V1+JSON; q=1', MediaType.OciManifest), true);
});
