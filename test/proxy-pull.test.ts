import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { distributionRequests, startDistribution, type RunningProcess } from './helpers/processes.js';
import {
  blobGets, inspectRaw, manifestGets, pull, seed, startCacheOn, startSlowRelay, storedBlobSize, total,
} from './helpers/proxy-fixtures.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Pull-through cache against a real upstream (CNCF distribution 2.8): skopeo pulls through the cache
 * give the upstream's digests, platform manifests come on demand, and concurrent cold pulls make one
 * upstream request per blob and manifest. On each storage driver.
 */

for (const kind of STORAGE_KINDS) {

  describe(`pull-through cache on ${kind}: pulls match the upstream`, () => {
    let upstream: RunningProcess & { root: string };
    let cache: RunningProcess;
    let storage: TestStorage;
    const single = buildImage({ layerSizes: [3000, 5000], seed: 'pull-single' });
    const amd64 = buildImage({ layerSizes: [2000], architecture: 'amd64', seed: 'pull-amd64' });
    const arm64 = buildImage({ layerSizes: [2000], architecture: 'arm64', seed: 'pull-arm64' });
    const burst = buildImage({ layerSizes: [1_000_000, 1000, 3000], seed: 'pull-burst' });
    let indexDigest: string;

    before(async () => {
      upstream = await startDistribution();
      await seed(upstream.url, 'team/single:v1', [single]);
      indexDigest = (await seed(upstream.url, 'team/multi:v1', [amd64, arm64], { index: true })).digest;
      await seed(upstream.url, 'team/burst:v1', [burst]);
      storage = await testStorage(kind);
      cache = await startCacheOn(storage, upstream.url);
    });

    after(async () => {
      await cache?.stop();
      await upstream?.stop();
      await storage?.cleanup();
    });

    it('single-arch: skopeo inspect --raw and skopeo copy give the same digests through the cache as from upstream', async () => {
      const direct = await inspectRaw(upstream.url, 'team/single:v1');
      const cached = await inspectRaw(cache.url, 'team/single:v1');
      assert.equal(direct.digest, single.manifest.digest);
      assert.equal(cached.digest, direct.digest);
      assert.deepEqual(cached.body, direct.body);

      const fromUpstream = await pull(upstream.url, 'team/single:v1');
      const fromCache = await pull(cache.url, 'team/single:v1');
      assert.equal(fromCache.top, single.manifest.digest);
      assert.deepEqual(fromCache.manifests, fromUpstream.manifests);
      assert.deepEqual(fromCache.manifests, [{ digest: single.manifest.digest, config: single.config.digest, layers: single.layers.map((l) => l.digest) }]);

      // Everything is now in the cache's store, verified, under the shared blob store.
      for (const blob of [single.config, ...single.layers]) {
        assert.equal(await storedBlobSize(storage, blob.digest), blob.size);
      }
      // A second pull (by digest this time) is answered from the cache: no new upstream GET.
      const before = total(blobGets(upstream.output(), 'team/single'));
      const again = await pull(cache.url, `team/single@${single.manifest.digest}`);
      assert.deepEqual(again.manifests, fromUpstream.manifests);
      assert.equal(total(blobGets(upstream.output(), 'team/single')), before);
    });

    // Manifests on demand: the same on every driver (the store's manifests: hosted-skopeo on both).
    it('multi-arch: a single-platform pull fetches only that platform\'s manifest; --all fetches the rest on demand', { skip: kind !== 'filesystem' && 'filesystem run only' }, async () => {
      const direct = await inspectRaw(upstream.url, 'team/multi:v1');
      const cached = await inspectRaw(cache.url, 'team/multi:v1');
      assert.equal(direct.digest, indexDigest);
      assert.equal(cached.digest, indexDigest);
      assert.deepEqual(cached.body, direct.body);

      // One platform (pull() asks for linux/amd64): the cache asks upstream for that child, never for arm64.
      const platform = await pull(cache.url, 'team/multi:v1');
      assert.deepEqual(platform.manifests, [{ digest: amd64.manifest.digest, config: amd64.config.digest, layers: amd64.layers.map((l) => l.digest) }]);
      let manifests = manifestGets(upstream.output(), 'team/multi');
      assert.equal(manifests.get(amd64.manifest.digest), 1);
      assert.equal(manifests.get(arm64.manifest.digest), undefined);
      assert.equal(blobGets(upstream.output(), 'team/multi').get(arm64.layers[0]!.digest), undefined);

      const all = await pull(cache.url, 'team/multi:v1', { all: true });
      const allDirect = await pull(upstream.url, 'team/multi:v1', { all: true });
      assert.equal(all.top, indexDigest);
      assert.deepEqual(all.manifests, allDirect.manifests);
      assert.equal(all.manifests.length, 2);
      manifests = manifestGets(upstream.output(), 'team/multi');
      assert.equal(manifests.get(amd64.manifest.digest), 1, 'the amd64 child was cached by the first pull');
      assert.equal(manifests.get(arm64.manifest.digest), 1, 'the arm64 child was fetched once, when first asked for');
      for (const count of blobGets(upstream.output(), 'team/multi').values()) assert.equal(count, 1);
    });

    it('8 concurrent cold pulls of one image: the upstream sees exactly one GET per blob and one per manifest', async () => {
      // A second cache reaches the upstream through a 1 MB/s link: the big layer's fill lasts about a
      // second, so all eight pulls ask for it while it is in flight (not one after another from disk).
      const relay = await startSlowRelay(upstream.port, 1_000_000);
      const slowStorage = await testStorage(kind);
      const slowCache = await startCacheOn(slowStorage, relay.url);
      const mark = upstream.output().length; // the log so far holds the seeding push
      let pulls;
      try {
        pulls = await Promise.all(Array.from({ length: 8 }, () => pull(slowCache.url, 'team/burst:v1')));
      } finally {
        await slowCache.stop();
        await relay.stop();
        await slowStorage.cleanup();
      }
      const fills = slowCache.logLines().filter((l) => l.msg === 'blob cached from upstream');
      assert.equal(fills.length, 4, 'config and three layers, each filled once');
      const expected = [{ digest: burst.manifest.digest, config: burst.config.digest, layers: burst.layers.map((l) => l.digest) }];
      for (const p of pulls) assert.deepEqual(p.manifests, expected);

      // Since the seeding push, nothing but the cache talked to team/burst: every request counts.
      const requests = distributionRequests(upstream.output().slice(mark)).filter((r) => r.path.startsWith('/v2/team/burst/'));
      const blobs = new Map<string, number>();
      const manifests = new Map<string, number>();
      for (const r of requests) {
        const blob = /^\/v2\/team\/burst\/blobs\/(sha256:[0-9a-f]{64})$/.exec(r.path);
        const manifest = /^\/v2\/team\/burst\/manifests\/([^/?]+)$/.exec(r.path);
        if (r.method === 'GET' && blob) blobs.set(blob[1]!, (blobs.get(blob[1]!) ?? 0) + 1);
        if (r.method === 'GET' && manifest) manifests.set(manifest[1]!, (manifests.get(manifest[1]!) ?? 0) + 1);
      }
      assert.deepEqual(Object.fromEntries(blobs), Object.fromEntries([burst.config, ...burst.layers].map((b) => [b.digest, 1])));
      assert.deepEqual(Object.fromEntries(manifests), { v1: 1 }, 'one GET of the tag (its digest is then known and cached)');
      assert.equal(requests.filter((r) => r.method !== 'GET' && r.method !== 'HEAD').length, 0);
      assert.equal(requests.filter((r) => r.status !== 200).length, 0);
    });
  });
}
