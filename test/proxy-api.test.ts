import assert from 'node:assert/strict';
import { readdir, rm, stat } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { buildRegistry } from '../services/registry/src/app.js';
import { createLogger } from '../lib/log.js';
import { parseUpstream } from '../lib/upstreams.js';
import { buildImage, writeOciLayout } from './helpers/oci-image.js';
import { startDistribution, startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import {
  blobGets, cacheBlobPath, cacheRequests, hostOf, manifestDigest, manifestGets, ociError, pull, pushBlob, pushManifest,
  requestCounts, seed, sha256, sleep, total, run,
} from './helpers/proxy-fixtures.js';

/** The pull-through cache's API surface: no pushes, DELETE purges, negative cache, listings, namespaces on disk. */

const cleanup: Array<() => Promise<unknown>> = [];
async function cleanUp(): Promise<void> {
  for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
}

async function startCache(upstream: string, extra: string[] = [], root?: string): Promise<RunningProcess & { root: string }> {
  if (!root) {
    const dir = await tempDir('proxy-api-root-');
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    root = dir;
  }
  const cache = await startStevedoreRegistry(['--root', root, '--upstream', upstream, ...extra]);
  cleanup.push(() => cache.stop());
  return Object.assign(cache, { root });
}

const exists = (path: string): Promise<boolean> => stat(path).then(() => true, () => false);

describe('pull-through cache: pushes refused, DELETE purges the cache only', () => {
  let upstream: RunningProcess & { root: string };
  let cache: RunningProcess & { root: string };
  const image = buildImage({ layerSizes: [1500, 2500], seed: 'api-purge' });

  before(async () => {
    upstream = await startDistribution();
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/app:v1', [image]);
    cache = await startCache(upstream.url);
  });
  after(cleanUp);

  it('every kind of push answers 405 UNSUPPORTED, and skopeo copy to the cache fails', async () => {
    const mark = upstream.output().length;
    const attempts: Array<[string, string, Buffer | undefined]> = [
      ['POST', '/v2/team/app/blobs/uploads/', undefined],
      ['POST', `/v2/team/app/blobs/uploads/?digest=${image.config.digest}`, image.config.data],
      ['POST', `/v2/team/app/blobs/uploads/?mount=${image.config.digest}&from=team/other`, undefined],
      ['PATCH', '/v2/team/app/blobs/uploads/8f2b1a5e-0c3d-4e5f-8a9b-0c1d2e3f4a5b', Buffer.from('x')],
      ['PUT', '/v2/team/app/blobs/uploads/8f2b1a5e-0c3d-4e5f-8a9b-0c1d2e3f4a5b?digest=' + image.config.digest, image.config.data],
      ['PUT', '/v2/team/app/manifests/v2', image.manifest.data],
    ];
    for (const [method, path, body] of attempts) {
      const res = await fetch(`${cache.url}${path}`, { method, body, headers: { 'content-type': image.manifest.mediaType } });
      assert.equal(res.status, 405, `${method} ${path}`);
      const error = await ociError(res);
      assert.equal(error.code, 'UNSUPPORTED');
      assert.match(error.message, new RegExp(`pull-through cache of ${hostOf(upstream.url).replace(/\./g, '\\.')}: pushes are not supported`));
    }
    const dir = await tempDir('proxy-api-push-');
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    await writeOciLayout(dir, 'x', [image]);
    const pushed = await run('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', '--retry-times', '0', `oci:${dir}:x`, `docker://${hostOf(cache.url)}/team/app:pushed`]);
    assert.notEqual(pushed.code, 0);
    assert.match(pushed.stderr, /pushes are not supported|405|unsupported/i);
    // skopeo first asks (HEAD) whether the blobs exist, which the cache may pass on; no write ever reaches the upstream.
    const reached = cacheRequests(upstream.output().slice(mark));
    assert.deepEqual(reached.filter((r) => r.method !== 'HEAD' && r.method !== 'GET'), [], 'no write reached the upstream');
    assert.equal((await manifestDigest(upstream.url, 'team/app', 'pushed')).status, 404);
  });

  it('DELETE of a cached tag: 202, the upstream keeps it, the next pull fetches it again', async () => {
    await pull(cache.url, 'team/app:v1');
    assert.equal(manifestGets(upstream.output(), 'team/app').get('v1'), 1);
    const del = await fetch(`${cache.url}/v2/team/app/manifests/v1`, { method: 'DELETE' });
    assert.equal(del.status, 202);
    assert.equal(await exists(join(cache.root, 'cache', hostOf(upstream.url), 'team/app/_manifests/tags/v1')), false);
    assert.equal((await manifestDigest(upstream.url, 'team/app', 'v1')).digest, image.manifest.digest, 'upstream untouched');
    const again = await manifestDigest(cache.url, 'team/app', 'v1', 'GET');
    assert.equal(again.status, 200);
    assert.equal(again.digest, image.manifest.digest);
    assert.equal(manifestGets(upstream.output(), 'team/app').get('v1'), 2, 'refetched from upstream');
    assert.ok(cache.logLines().some((l) => l.msg === 'purged from cache' && l.reference === 'v1'));
  });

  it('DELETE of a cached manifest digest: 202, its tags go too, the next pull by digest fetches it again', async () => {
    const digest = image.manifest.digest;
    assert.equal(manifestGets(upstream.output(), 'team/app').get(digest), undefined);
    const del = await fetch(`${cache.url}/v2/team/app/manifests/${digest}`, { method: 'DELETE' });
    assert.equal(del.status, 202);
    assert.equal((await manifestDigest(upstream.url, 'team/app', digest)).status, 200, 'upstream untouched');
    const byDigest = await manifestDigest(cache.url, 'team/app', digest, 'GET');
    assert.equal(byDigest.status, 200);
    assert.deepEqual(byDigest.body, image.manifest.data);
    assert.equal(manifestGets(upstream.output(), 'team/app').get(digest), 1, 'fetched by digest from upstream');
    await manifestDigest(cache.url, 'team/app', 'v1', 'GET');
    assert.equal(manifestGets(upstream.output(), 'team/app').get('v1'), 3, 'the tag that pointed at it was purged too');
  });

  it('DELETE of a blob: 202 and the upstream keeps it; the bytes stay in the shared store, so it is served again', async () => {
    const layer = image.layers[0]!;
    const del = await fetch(`${cache.url}/v2/team/app/blobs/${layer.digest}`, { method: 'DELETE' });
    assert.equal(del.status, 202);
    const upstreamHead = await fetch(`${upstream.url}/v2/team/app/blobs/${layer.digest}`, { method: 'HEAD' });
    assert.equal(upstreamHead.status, 200);
    const res = await fetch(`${cache.url}/v2/team/app/blobs/${layer.digest}`);
    assert.equal(res.status, 200);
    assert.deepEqual(Buffer.from(await res.arrayBuffer()), layer.data);
    assert.equal(blobGets(upstream.output(), 'team/app').get(layer.digest), 1, 'verified bytes by digest need no second download');
  });

  it('a reference that is neither a tag nor a digest is 404 MANIFEST_UNKNOWN for GET, HEAD and DELETE, without asking the upstream', async () => {
    const mark = upstream.output().length;
    for (const method of ['GET', 'HEAD', 'DELETE']) {
      for (const ref of ['.INVALID_MANIFEST_NAME', 'sha256:abc']) {
        const res = await fetch(`${cache.url}/v2/team/app/manifests/${ref}`, { method });
        assert.equal(res.status, 404, `${method} ${ref}`);
        if (method !== 'HEAD') assert.equal((await ociError(res)).code, 'MANIFEST_UNKNOWN');
      }
    }
    assert.deepEqual(cacheRequests(upstream.output().slice(mark)), []);
  });

  it('DELETE of something the cache does not hold: 404', async () => {
    const tag = await fetch(`${cache.url}/v2/team/app/manifests/never-cached`, { method: 'DELETE' });
    assert.equal(tag.status, 404);
    assert.equal((await ociError(tag)).code, 'MANIFEST_UNKNOWN');
    const blob = await fetch(`${cache.url}/v2/team/app/blobs/${sha256('nope')}`, { method: 'DELETE' });
    assert.equal(blob.status, 404);
    assert.equal((await ociError(blob)).code, 'BLOB_UNKNOWN');
  });
});

describe('pull-through cache: negative cache', () => {
  let upstream: RunningProcess & { root: string };
  let cache: RunningProcess & { root: string };
  const late = buildImage({ layerSizes: [900], seed: 'api-late' });

  before(async () => {
    upstream = await startDistribution();
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/neg:v1', [buildImage({ layerSizes: [800], seed: 'api-neg' })]);
    await seed(upstream.url, 'team/neg:other', [late]); // so that tagging it `later` is one quick PUT
    cache = await startCache(upstream.url, ['--negative-ttl', '2s']);
  });
  after(cleanUp);

  it('repeated requests for a missing tag within --negative-ttl make one upstream request; after it, the tag is seen', async () => {
    const firstAt = Date.now();
    for (let i = 0; i < 5; i++) {
      const res = await fetch(`${cache.url}/v2/team/neg/manifests/later`);
      assert.equal(res.status, 404);
      const error = await ociError(res);
      assert.equal(error.code, 'MANIFEST_UNKNOWN');
      assert.match(error.message, /manifest unknown to upstream/);
    }
    const concurrent = await Promise.all(Array.from({ length: 5 }, () => fetch(`${cache.url}/v2/team/neg/manifests/later`, { method: 'HEAD' })));
    assert.deepEqual(concurrent.map((r) => r.status), [404, 404, 404, 404, 404]);
    assert.equal(manifestGets(upstream.output(), 'team/neg').get('later'), 1);

    // The tag appears upstream: the cache keeps answering 404 until the negative entry expires.
    await pushManifest(upstream.url, 'team/neg', 'later', late.manifest.data, late.manifest.mediaType);
    const stillMissing = await fetch(`${cache.url}/v2/team/neg/manifests/later`);
    assert.ok(Date.now() - firstAt < 2000);
    assert.equal(stillMissing.status, 404);
    await stillMissing.arrayBuffer();
    assert.equal(manifestGets(upstream.output(), 'team/neg').get('later'), 1);
    await sleep(Math.max(0, firstAt + 2200 - Date.now()));
    const found = await manifestDigest(cache.url, 'team/neg', 'later', 'GET');
    assert.equal(found.status, 200);
    assert.equal(found.digest, late.manifest.digest);
    assert.equal(manifestGets(upstream.output(), 'team/neg').get('later'), 2);
  });

  it('missing blobs and missing repositories are remembered the same way', async () => {
    const missing = sha256('no such blob');
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${cache.url}/v2/team/neg/blobs/${missing}`);
      assert.equal(res.status, 404);
      assert.equal((await ociError(res)).code, 'BLOB_UNKNOWN');
    }
    assert.equal(blobGets(upstream.output(), 'team/neg').get(missing), 1);
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${cache.url}/v2/team/absent/manifests/v1`);
      assert.equal(res.status, 404);
      assert.equal((await ociError(res)).code, 'MANIFEST_UNKNOWN');
    }
    assert.equal(manifestGets(upstream.output(), 'team/absent').get('v1'), 1);
  });
});

describe('pull-through cache: tags list and referrers pass through', () => {
  let upstream: RunningProcess & { root: string };
  let cache: RunningProcess & { root: string };
  const image = buildImage({ layerSizes: [1000], seed: 'api-lists' });
  const artifactType = 'application/vnd.example.sbom.v1+json';
  let artifact: { digest: string; body: Buffer };

  before(async () => {
    upstream = await startDistribution();
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/lists:v1', [image]);
    await seed(upstream.url, 'team/lists:v2', [image]);
    await seed(upstream.url, 'team/lists:a-first', [image]);
    // An artifact whose subject is the image (distribution 2.8 stores it, but has no referrers API).
    const empty = Buffer.from('{}');
    const sbom = Buffer.from(JSON.stringify({ spdxVersion: 'SPDX-2.3' }));
    await pushBlob(upstream.url, 'team/lists', empty);
    await pushBlob(upstream.url, 'team/lists', sbom);
    const body = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      artifactType,
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(empty), size: empty.length },
      layers: [{ mediaType: 'application/spdx+json', digest: sha256(sbom), size: sbom.length }],
      subject: { mediaType: image.manifest.mediaType, digest: image.manifest.digest, size: image.manifest.size },
      annotations: { 'org.example.kind': 'sbom' },
    }));
    const digest = await pushManifest(upstream.url, 'team/lists', sha256(body), body, 'application/vnd.oci.image.manifest.v1+json');
    assert.equal(digest, sha256(body));
    artifact = { digest, body };
    cache = await startCache(upstream.url);
  });
  after(cleanUp);

  it('tags list: the upstream\'s tags at the time of the request, sorted, paginated by the cache (n, last, Link)', async () => {
    const direct = await (await fetch(`${upstream.url}/v2/team/lists/tags/list`)).json() as { name: string; tags: string[] };
    assert.deepEqual([...direct.tags].sort(), ['a-first', 'v1', 'v2']);
    const res = await fetch(`${cache.url}/v2/team/lists/tags/list`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('link'), null);
    // Sorted lexically whatever order the upstream (distribution 2.8 does not sort) answers in.
    assert.deepEqual(await res.json(), { name: 'team/lists', tags: ['a-first', 'v1', 'v2'] });

    // distribution 2.8 ignores n and last; the cache paginates itself, with the spec's Link header.
    const pages: string[][] = [];
    let next: string | null = '/v2/team/lists/tags/list?n=1';
    while (next) {
      const page = await fetch(`${cache.url}${next}`);
      assert.equal(page.status, 200);
      pages.push(((await page.json()) as { tags: string[] }).tags);
      const link = page.headers.get('link');
      if (link) assert.match(link, /^<\/v2\/team\/lists\/tags\/list\?n=1&last=[^>]+>; rel="next"$/);
      next = link ? /^<([^>]+)>/.exec(link)![1]! : null;
      assert.ok(pages.length <= 3);
    }
    assert.deepEqual(pages, [['a-first'], ['v1'], ['v2']]);
    const afterLast = await fetch(`${cache.url}/v2/team/lists/tags/list?last=v1`);
    assert.deepEqual(((await afterLast.json()) as { tags: string[] }).tags, ['v2']);
    const none = await fetch(`${cache.url}/v2/team/lists/tags/list?n=0`);
    assert.deepEqual(((await none.json()) as { tags: string[] }).tags, []);
    assert.equal(none.headers.get('link'), null);
    const bad = await fetch(`${cache.url}/v2/team/lists/tags/list?n=-1`);
    assert.equal(bad.status, 400);
    assert.equal((await ociError(bad)).code, 'UNSUPPORTED');

    // A tag pushed upstream is in the very next list (nothing is reused while the upstream answers).
    await pushManifest(upstream.url, 'team/lists', 'b-new', image.manifest.data, image.manifest.mediaType);
    const fresh = await fetch(`${cache.url}/v2/team/lists/tags/list`);
    assert.deepEqual(((await fresh.json()) as { tags: string[] }).tags, ['a-first', 'b-new', 'v1', 'v2']);

    const unknown = await fetch(`${cache.url}/v2/team/nothing/tags/list`);
    assert.equal(unknown.status, 404);
    assert.equal((await ociError(unknown)).code, 'NAME_UNKNOWN');
  });

  it('referrers: distribution 2.8 has no referrers API, so the cache answers 200 with what it knows, never 404', async () => {
    const url = `${cache.url}/v2/team/lists/referrers/${image.manifest.digest}`;
    const cold = await fetch(url);
    assert.equal(cold.status, 200);
    assert.match(cold.headers.get('content-type') ?? '', /^application\/vnd\.oci\.image\.index\.v1\+json(;|$)/);
    assert.deepEqual(await cold.json(), { schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: [] });
    assert.ok(cacheRequests(upstream.output()).some((r) => r.path === `/v2/team/lists/referrers/${image.manifest.digest}` && r.status === 404),
      'the upstream was asked first');

    // Once the artifact is pulled through the cache, the cache knows it as a referrer.
    const pulled = await manifestDigest(cache.url, 'team/lists', artifact.digest, 'GET');
    assert.equal(pulled.status, 200);
    assert.deepEqual(pulled.body, artifact.body);
    const known = await fetch(url);
    assert.equal(known.status, 200);
    const index = await known.json() as { manifests: Array<Record<string, unknown>> };
    assert.deepEqual(index.manifests, [{
      mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: artifact.digest, size: artifact.body.length,
      artifactType, annotations: { 'org.example.kind': 'sbom' },
    }]);

    const filtered = await fetch(`${url}?artifactType=${encodeURIComponent(artifactType)}`);
    assert.equal(filtered.status, 200);
    assert.equal(filtered.headers.get('oci-filters-applied'), 'artifactType');
    assert.equal((await filtered.json() as { manifests: unknown[] }).manifests.length, 1);
    const other = await fetch(`${url}?artifactType=application/vnd.example.other`);
    assert.equal(other.status, 200);
    assert.equal(other.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual((await other.json() as { manifests: unknown[] }).manifests, []);

    const nobody = await fetch(`${cache.url}/v2/team/lists/referrers/${sha256('no subject')}`);
    assert.equal(nobody.status, 200);
    assert.deepEqual((await nobody.json() as { manifests: unknown[] }).manifests, []);
  });
});

describe('pull-through cache: referrers of an upstream that has the referrers API (a hosted Stevedore)', () => {
  let upstream: RunningProcess;
  let cache: RunningProcess & { root: string };
  const image = buildImage({ layerSizes: [700], seed: 'api-referrers-upstream' });
  const signature = 'application/vnd.example.signature.v1';
  const sbom = 'application/vnd.example.sbom.v1';
  const artifacts: Record<string, string> = {};

  before(async () => {
    const upstreamRoot = await tempDir('proxy-api-hosted-');
    cleanup.push(() => rm(upstreamRoot, { recursive: true, force: true }));
    upstream = await startStevedoreRegistry(['--root', upstreamRoot]);
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/signed:v1', [image]);
    const empty = Buffer.from('{}');
    await pushBlob(upstream.url, 'team/signed', empty);
    for (const artifactType of [signature, sbom]) {
      const body = Buffer.from(JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        artifactType,
        config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(empty), size: empty.length },
        layers: [{ mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(empty), size: empty.length }],
        subject: { mediaType: image.manifest.mediaType, digest: image.manifest.digest, size: image.manifest.size },
      }));
      artifacts[artifactType] = await pushManifest(upstream.url, 'team/signed', sha256(body), body, 'application/vnd.oci.image.manifest.v1+json');
    }
    cache = await startCache(upstream.url);
  });
  after(cleanUp);

  it('passes the upstream\'s referrers index through, filters included, without the cache having pulled them', async () => {
    const url = `${cache.url}/v2/team/signed/referrers/${image.manifest.digest}`;
    const direct = await (await fetch(`${upstream.url}/v2/team/signed/referrers/${image.manifest.digest}`)).json();
    const res = await fetch(url);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/vnd\.oci\.image\.index\.v1\+json(;|$)/);
    const index = await res.json() as { manifests: Array<{ digest: string; artifactType: string }> };
    assert.deepEqual(index, direct);
    assert.deepEqual(index.manifests.map((m) => m.digest).sort(), Object.values(artifacts).sort());

    const filtered = await fetch(`${url}?artifactType=${encodeURIComponent(signature)}`);
    assert.equal(filtered.status, 200);
    assert.equal(filtered.headers.get('oci-filters-applied'), 'artifactType');
    const only = await filtered.json() as { manifests: Array<{ digest: string; artifactType: string }> };
    assert.deepEqual(only.manifests.map((m) => [m.artifactType, m.digest]), [[signature, artifacts[signature]]]);
  });
});

describe('pull-through cache: each upstream is its own namespace on a shared root', () => {
  let root: string;
  let upstreamA: RunningProcess & { root: string };
  let upstreamB: RunningProcess & { root: string };
  let cacheA: RunningProcess & { root: string };
  let cacheB: RunningProcess & { root: string };
  const image = buildImage({ layerSizes: [3000, 4000], seed: 'api-shared' });
  const onlyB = buildImage({ layerSizes: [500], seed: 'api-only-b' });

  before(async () => {
    root = await tempDir('proxy-shared-root-');
    cleanup.push(() => rm(root, { recursive: true, force: true }));
    upstreamA = await startDistribution();
    cleanup.push(() => upstreamA.stop());
    upstreamB = await startDistribution();
    cleanup.push(() => upstreamB.stop());
    await seed(upstreamA.url, 'team/shared:v1', [image]);
    await seed(upstreamB.url, 'team/shared:v1', [image]);
    await seed(upstreamB.url, 'team/shared:only-b', [onlyB]);
    cacheA = await startCache(upstreamA.url, [], root);
    cacheB = await startCache(upstreamB.url, [], root);
  });
  after(cleanUp);

  it('keeps cache/<host>/ apart per upstream, and stores identical blobs once under <root>/blobs', async () => {
    const expected = [{ digest: image.manifest.digest, config: image.config.digest, layers: image.layers.map((l) => l.digest) }];
    assert.deepEqual((await pull(cacheA.url, 'team/shared:v1')).manifests, expected);
    assert.deepEqual((await pull(cacheB.url, 'team/shared:v1')).manifests, expected);
    assert.deepEqual((await pull(cacheB.url, 'team/shared:only-b')).manifests.map((m) => m.digest), [onlyB.manifest.digest]);

    const hostA = hostOf(upstreamA.url);
    const hostB = hostOf(upstreamB.url);
    assert.deepEqual((await readdir(join(root, 'cache'))).sort(), [hostA, hostB].sort());
    assert.equal(await exists(join(root, 'repositories')), false, 'no hosted repositories were made');
    assert.deepEqual(await readdir(join(root, 'cache', hostA, 'team/shared/_manifests/tags')), ['v1']);
    assert.deepEqual((await readdir(join(root, 'cache', hostB, 'team/shared/_manifests/tags'))).sort(), ['only-b', 'v1']);

    // Cache A's upstream has no only-b: cache A says so, whatever cache B holds.
    const crossed = await fetch(`${cacheA.url}/v2/team/shared/manifests/only-b`);
    assert.equal(crossed.status, 404);
    assert.equal((await ociError(crossed)).code, 'MANIFEST_UNKNOWN');
    // Purging in one namespace leaves the other alone.
    assert.equal((await fetch(`${cacheA.url}/v2/team/shared/manifests/v1`, { method: 'DELETE' })).status, 202);
    assert.deepEqual((await readdir(join(root, 'cache', hostB, 'team/shared/_manifests/tags'))).sort(), ['only-b', 'v1']);

    // One copy of each blob, and each was downloaded once across both upstreams.
    const shared = [image.manifest, image.config, ...image.layers];
    for (const b of shared) assert.equal((await stat(cacheBlobPath(root, b.digest))).size, b.size);
    const stored: string[] = [];
    for (const prefix of await readdir(join(root, 'blobs', 'sha256'))) stored.push(...await readdir(join(root, 'blobs', 'sha256', prefix)));
    const onlyBBlobs = [onlyB.manifest, onlyB.config, ...onlyB.layers];
    assert.deepEqual(stored.sort(), [...shared, ...onlyBBlobs].map((b) => b.digest.slice(7)).sort());
    const downloads = (digest: string) => (blobGets(upstreamA.output(), 'team/shared').get(digest) ?? 0) + (blobGets(upstreamB.output(), 'team/shared').get(digest) ?? 0);
    for (const b of [image.config, ...image.layers]) assert.equal(downloads(b.digest), 1, b.digest);
    assert.equal(total(requestCounts(upstreamB.output(), 'GET', '/v2/team/shared/manifests/')), 2, 'cache B fetched its own manifests');
  });
});

describe('pull-through cache: tags list of an upstream that paginates (a hosted Stevedore), and of one that is down', () => {
  let upstream: RunningProcess;
  let cache: FastifyInstance;
  let cacheUrl: string;
  const image = buildImage({ layerSizes: [300], seed: 'api-tag-pages' });
  const tags = ['v10', 'beta', 'v2', 'alpha', 'v1', 'rc-1', 'latest'];

  before(async () => {
    const upstreamRoot = await tempDir('proxy-api-tag-pages-');
    cleanup.push(() => rm(upstreamRoot, { recursive: true, force: true }));
    upstream = await startStevedoreRegistry(['--root', upstreamRoot]);
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, `team/paged:${tags[0]}`, [image]);
    const query = tags.slice(1).map((t) => `tag=${t}`).join('&');
    await pushManifest(upstream.url, 'team/paged', `${image.manifest.digest}?${query}`, image.manifest.data, image.manifest.mediaType);
    // In process, to set the upstream page size: the cache asks for 2 tags a page and must follow Link.
    const cacheRoot = await tempDir('proxy-api-tag-pages-cache-');
    cleanup.push(() => rm(cacheRoot, { recursive: true, force: true }));
    cache = (await buildRegistry({
      config: { root: cacheRoot, readOnly: false, manifestMaxSize: 4 * 1024 * 1024, upstream: parseUpstream(upstream.url), upstreamTimeout: 2_000 },
      log: createLogger('registry', 'silent'),
      proxyOptions: { upstreamTagsPageSize: 2 },
    })).app;
    await cache.listen({ host: '127.0.0.1', port: 0 });
    cacheUrl = `http://127.0.0.1:${(cache.server.address() as AddressInfo).port}`;
    cleanup.push(() => cache.close());
  });
  after(cleanUp);

  it('follows the upstream\'s Link headers to the last page, then sorts and paginates itself', async () => {
    const firstUpstreamPage = await fetch(`${upstream.url}/v2/team/paged/tags/list?n=2`);
    assert.ok(firstUpstreamPage.headers.get('link'), 'the upstream paginates');
    const all = await fetch(`${cacheUrl}/v2/team/paged/tags/list`);
    assert.equal(all.status, 200);
    assert.deepEqual(await all.json(), { name: 'team/paged', tags: [...tags].sort() });
    const page = await fetch(`${cacheUrl}/v2/team/paged/tags/list?n=3&last=beta`);
    assert.deepEqual(((await page.json()) as { tags: string[] }).tags, ['latest', 'rc-1', 'v1']);
    assert.equal(page.headers.get('link'), '</v2/team/paged/tags/list?n=3&last=v1>; rel="next"');
  });

  it('serves the last list it fetched when the upstream cannot answer', async () => {
    await upstream.stop();
    const res = await fetch(`${cacheUrl}/v2/team/paged/tags/list?n=4`);
    assert.equal(res.status, 200);
    assert.deepEqual(((await res.json()) as { tags: string[] }).tags, ['alpha', 'beta', 'latest', 'rc-1']);
    assert.equal(res.headers.get('link'), '</v2/team/paged/tags/list?n=4&last=rc-1>; rel="next"');
  });
});
