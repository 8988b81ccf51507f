import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseImageList, parseImageReference, storedRepository } from '../lib/airgap/image-list.js';
import { parsePlatforms, platformMatches, selectIndexEntries } from '../lib/airgap/platform.js';
import { loadMirrorConfig, loadSeedConfig } from '../lib/config.js';

/** The image list and platform rules of `stevedore mirror` (no processes needed). */

describe('air-gap image lists', () => {
  it('normalises references the way docker and containerd do', () => {
    const nginx = parseImageReference('nginx');
    assert.deepEqual([nginx.registry, nginx.repository, nginx.tag, nginx.text], ['docker.io', 'library/nginx', 'latest', 'docker.io/library/nginx:latest']);
    const pause = parseImageReference('docker.io/rancher/mirrored-pause:3.6');
    assert.deepEqual([pause.registry, pause.repository, pause.tag], ['docker.io', 'rancher/mirrored-pause', '3.6']);
    assert.equal(parseImageReference('index.docker.io/library/busybox:1').text, 'docker.io/library/busybox:1');
    const hex = 'a'.repeat(64);
    const quay = parseImageReference(`quay.io/x/y@sha256:${hex}`);
    assert.deepEqual([quay.registry, quay.repository, quay.tag, quay.digest?.value], ['quay.io', 'x/y', undefined, `sha256:${hex}`]);
    const both = parseImageReference(`127.0.0.1:5000/a/b:v1@sha256:${hex}`);
    assert.deepEqual([both.registry, both.repository, both.tag], ['127.0.0.1:5000', 'a/b', 'v1']);
    assert.equal(parseImageReference('localhost/app').registry, 'localhost');
    assert.equal(parseImageReference('rancher/pause:3.6').text, 'docker.io/rancher/pause:3.6');
  });

  it('refuses bad references with the reason', () => {
    assert.throws(() => parseImageReference('Nginx'), /lower-case/);
    assert.throws(() => parseImageReference('nginx@sha256:abc'), /digest/);
    assert.throws(() => parseImageReference('https://quay.io/x/y'), /URL scheme/);
    assert.throws(() => parseImageReference('a//b'), /not a valid repository name/);
  });

  it('stores names without the registry host unless --keep-registry', () => {
    const ref = parseImageReference('docker.io/rancher/pause:3.6');
    assert.equal(storedRepository(ref, false), 'rancher/pause');
    assert.equal(storedRepository(ref, true), 'docker.io/rancher/pause');
    assert.equal(storedRepository(parseImageReference('registry.lan:5000/team/app'), true), 'registry.lan_5000/team/app');
  });

  it('reads a list with comments, blank lines and duplicates, and reports every bad line', () => {
    const entries = parseImageList('# images\n\nnginx\n  docker.io/library/nginx:latest  # same\nquay.io/x/y:1\n', 'list.txt');
    assert.deepEqual(entries.map((e) => [e.line, e.reference.text]), [[3, 'docker.io/library/nginx:latest'], [5, 'quay.io/x/y:1']]);
    assert.throws(() => parseImageList('ok\nBAD\nalso bad here\n', 'list.txt'), (err: Error) => err.message.includes('list.txt:2:') && err.message.includes('list.txt:3:'));
  });

  it('selects platforms of an index, with their attestations', () => {
    const d = (n: number) => `sha256:${String(n).repeat(64)}`;
    const manifests = [
      { mediaType: 'm', digest: d(1), size: 1, platform: { os: 'linux', architecture: 'amd64' } },
      { mediaType: 'm', digest: d(2), size: 1, platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
      { mediaType: 'm', digest: d(3), size: 1, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
      { mediaType: 'm', digest: d(4), size: 1, platform: { os: 'unknown', architecture: 'unknown' }, annotations: { 'vnd.docker.reference.type': 'attestation-manifest', 'vnd.docker.reference.digest': d(2) } },
    ];
    assert.deepEqual(selectIndexEntries(manifests, parsePlatforms('linux/arm64')).map((m) => m.digest), [d(2), d(4)]);
    assert.deepEqual(selectIndexEntries(manifests, parsePlatforms('linux/amd64,linux/arm/v7')).map((m) => m.digest), [d(1), d(3)]);
    assert.equal(selectIndexEntries(manifests, undefined).length, 4);
    assert.ok(platformMatches({ os: 'linux', architecture: 'arm64' }, parsePlatforms('linux/arm64/v8')));
    assert.ok(!platformMatches({ os: 'linux', architecture: 'arm', variant: 'v6' }, parsePlatforms('linux/arm/v7')));
  });

  it('options: repeated --platform, required options, and bad values name the option', () => {
    const config = loadMirrorConfig(['--list', 'l.txt', '--store', '/tmp/s', '--platform', 'linux/amd64', '--platform=linux/arm64'], {});
    assert.deepEqual(config.platforms.map((p) => p.architecture), ['amd64', 'arm64']);
    assert.deepEqual(loadMirrorConfig(['--list', 'l'], { STEVEDORE_ROOT: '/tmp/s', STEVEDORE_INSECURE_REGISTRIES: 'a.lan:5000, http://b.lan' }).insecureRegistries, ['a.lan:5000', 'b.lan']);
    assert.throws(() => loadMirrorConfig(['--store', '/tmp/s'], {}), /missing --list \(STEVEDORE_MIRROR_LIST\)/);
    assert.throws(() => loadMirrorConfig(['--list', 'l', '--store', 's', '--jobs', '0'], {}), /--jobs/);
    assert.throws(() => loadMirrorConfig(['--list', 'l', '--store', 's'], { STEVEDORE_MIRROR_PLATFORMS: 'linux' }), /STEVEDORE_MIRROR_PLATFORMS/);
    assert.throws(() => loadSeedConfig(['--from', 'x', '--store', 's', '--name', 'Bad'], {}), /--name/);
  });
});
