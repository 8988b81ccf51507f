import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseDigest } from '../lib/oci/digest.js';
import type { StorageDriver } from '../lib/storage/driver/driver.js';
import { leaseKey, readLeaseRecord } from '../lib/storage/lease.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { servedManifestDigest } from './helpers/hosted.js';
import { buildImage } from './helpers/oci-image.js';
import { hostOf, requestCounts, seed } from './helpers/proxy-fixtures.js';
import { startDistribution, startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { cephInstalled, STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Issue 12, pull-through manifests and tags fetched once across appliances: three cache workers (each
 * its own --root, as three appliances) of one upstream (Debian docker-registry, whose access log counts
 * the requests) on ONE store with STEVEDORE_SHARED_STORE=true. Concurrent manifest GETs spread over the
 * three make one upstream GET; after the tag TTL, one HEAD. A foreign lease record stands for an
 * appliance that holds a flight (live: the others wait; expired: one takes over). A single appliance
 * (store not shared) never looks at leases: a live foreign lease does not hold it up.
 */

const TAG_TTL_MS = 3000;

/** `count` GETs at once, spread round-robin over `bases`: the digests they answered. */
function spread(bases: string[], count: number, name: string, reference: string): Promise<Array<string | number>> {
  return Promise.all(Array.from({ length: count }, (_, i) => servedManifestDigest(bases[i % bases.length]!, name, reference)));
}

/** The cache's upstream requests (method) per manifest reference of `name`, once the access log has them. */
async function upstreamCounts(upstream: RunningProcess, method: string, name: string): Promise<Record<string, number>> {
  await sleep(150); // distribution writes its access-log line as the response ends
  return Object.fromEntries(requestCounts(upstream.output(), method, `/v2/${name}/manifests/`));
}

/** A lease record as another appliance would have written it. */
async function foreignLease(driver: StorageDriver, name: string, expiresInMs: number): Promise<void> {
  await driver.putContent(leaseKey(name), JSON.stringify({ holder: 'other-appliance/1/abcd', expiresAt: Date.now() + expiresInMs, renewedAt: Date.now() }));
}

/** Every key under `_state/leases/`. */
async function leaseKeys(driver: StorageDriver): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of driver.walk('_state/leases/')) keys.push(info.key);
  return keys.sort();
}

for (const kind of STORAGE_KINDS) {
  describe(`pull-through manifests fetched once across three appliances on one ${kind} store`, { skip: kind === 's3' && !cephInstalled() ? 'Ceph not installed' : false }, () => {
    let upstream: RunningProcess & { root: string };
    let storage: TestStorage;
    let layout: StorageLayout;
    const workers: RunningProcess[] = [];
    const roots: string[] = [];
    let bases: string[];
    const app = buildImage({ layerSizes: [1000], seed: 'flight-app' });
    const amd64 = buildImage({ layerSizes: [1000], architecture: 'amd64', seed: 'flight-amd64' });
    const arm64 = buildImage({ layerSizes: [1000], architecture: 'arm64', seed: 'flight-arm64' });
    const waiting = buildImage({ layerSizes: [1000], seed: 'flight-waiting' });

    before(async () => {
      upstream = await startDistribution();
      await seed(upstream.url, 'team/app:v1', [app]);
      await seed(upstream.url, 'team/multi:v1', [amd64, arm64], { index: true });
      await seed(upstream.url, 'team/waiting:v1', [waiting]);
      storage = await testStorage(kind);
      layout = new StorageLayout('/', { namespace: hostOf(upstream.url) });
      const env = { ...storage.env, STEVEDORE_SHARED_STORE: 'true' };
      for (let i = 0; i < 3; i++) roots.push(await tempDir(`stevedore-flight-${i}-`));
      workers.push(...await Promise.all(roots.map((root) => startStevedoreRegistry(['--root', root, '--storage', storage.storage, '--upstream', upstream.url, '--tag-ttl', `${TAG_TTL_MS}ms`], env))));
      bases = workers.map((w) => w.url);
    });

    after(async () => {
      await Promise.all(workers.map((w) => w.stop()));
      await upstream?.stop();
      for (const root of roots) await rm(root, { recursive: true, force: true });
      await storage?.cleanup();
    });

    it('8 concurrent GETs by tag, then by digest, over 3 appliances: one upstream GET each; after the TTL, one HEAD', async () => {
      assert.deepEqual(new Set(await spread(bases, 8, 'team/app', 'v1')), new Set([app.manifest.digest]));
      assert.deepEqual(await upstreamCounts(upstream, 'GET', 'team/app'), { v1: 1 });
      assert.deepEqual(await upstreamCounts(upstream, 'HEAD', 'team/app'), {});
      // Within the TTL (S3 reports the tag's write time to the second: asked at once): from the store.
      assert.deepEqual(new Set(await spread(bases, 6, 'team/app', 'v1')), new Set([app.manifest.digest]));
      assert.deepEqual(await upstreamCounts(upstream, 'HEAD', 'team/app'), {});

      // The index's children by digest (never fetched through its tag): each once.
      for (const child of [amd64, arm64]) {
        assert.deepEqual(new Set(await spread(bases, 8, 'team/multi', child.manifest.digest)), new Set([child.manifest.digest]));
      }
      assert.deepEqual(await upstreamCounts(upstream, 'GET', 'team/multi'), { [amd64.manifest.digest]: 1, [arm64.manifest.digest]: 1 });

      await sleep(TAG_TTL_MS + 300);
      assert.deepEqual(new Set(await spread(bases, 8, 'team/app', 'v1')), new Set([app.manifest.digest]));
      assert.deepEqual(await upstreamCounts(upstream, 'HEAD', 'team/app'), { v1: 1 }, 'one revalidation across the three');
      assert.deepEqual(await upstreamCounts(upstream, 'GET', 'team/app'), { v1: 1 }, 'the tag did not move: no new GET');
      // The revalidation is stored: no appliance asks again within the TTL.
      assert.deepEqual(new Set(await spread(bases, 6, 'team/app', 'v1')), new Set([app.manifest.digest]));
      assert.deepEqual(await upstreamCounts(upstream, 'HEAD', 'team/app'), { v1: 1 });

      assert.deepEqual(await leaseKeys(storage.driver), [], 'finished flights leave no lease keys');
    });

    it('a flight held by another appliance: they wait (no upstream request) until its lease expires, then one takes over', async () => {
      const tagLease = layout.tagFillLease('team/waiting', 'v1');
      const digestLease = layout.manifestFillLease('team/waiting', parseDigest(waiting.manifest.digest));
      await foreignLease(storage.driver, tagLease, 1500);
      await foreignLease(storage.driver, digestLease, 1500);
      const started = Date.now();
      const [byTag, byDigest] = await Promise.all([
        spread(bases, 6, 'team/waiting', 'v1'),
        (async () => {
          await sleep(700);
          // Still held: nobody has asked the upstream yet.
          assert.deepEqual(await upstreamCounts(upstream, 'GET', 'team/waiting'), {});
          return spread(bases, 3, 'team/waiting', waiting.manifest.digest);
        })(),
      ]);
      const elapsed = Date.now() - started;
      assert.deepEqual(new Set([...byTag, ...byDigest]), new Set([waiting.manifest.digest]));
      assert.ok(elapsed >= 1400, `answered after ${elapsed} ms: the live lease was respected`);
      const gets = await upstreamCounts(upstream, 'GET', 'team/waiting');
      // The tag's taker fetches by tag and stores the manifest, which answers the digest flight too,
      // unless that one's lease expired first (then its taker fetched by digest): one GET per flight at most.
      assert.equal(gets.v1, 1);
      assert.ok((gets[waiting.manifest.digest] ?? 0) <= 1, JSON.stringify(gets));
      // Taken-over leases were deleted when their flight ended. A dead holder's record nobody needed to
      // take over (its answer came through the other flight) stays: expired, the next flight replaces it.
      for (const key of await leaseKeys(storage.driver)) {
        assert.equal(key, leaseKey(digestLease));
        const record = await readLeaseRecord(storage.driver, digestLease);
        assert.equal(record?.holder, 'other-appliance/1/abcd');
        assert.ok(record.expiresAt < Date.now());
      }
      assert.equal(await readLeaseRecord(storage.driver, tagLease), undefined);
    });
  });

  describe(`a single appliance on ${kind} (store not shared) never reads or writes a lease`, { skip: kind === 's3' && !cephInstalled() ? 'Ceph not installed' : false }, () => {
    let upstream: RunningProcess & { root: string };
    let storage: TestStorage;
    let cache: RunningProcess;
    const image = buildImage({ layerSizes: [1000], seed: 'flight-single' });

    before(async () => {
      upstream = await startDistribution();
      await seed(upstream.url, 'team/single:v1', [image]);
      storage = await testStorage(kind);
      cache = await startStevedoreRegistry(['--root', storage.root, ...storage.args, '--upstream', upstream.url, '--tag-ttl', '1s'], storage.env);
    });

    after(async () => {
      await cache?.stop();
      await upstream?.stop();
      await storage?.cleanup();
    });

    it('a live foreign lease on the tag and the digest does not hold it up; no lease key is written', async () => {
      const layout = new StorageLayout('/', { namespace: hostOf(upstream.url) });
      const names = [layout.tagFillLease('team/single', 'v1'), layout.manifestFillLease('team/single', parseDigest(image.manifest.digest))];
      for (const name of names) await foreignLease(storage.driver, name, 60_000);
      const before = await leaseKeys(storage.driver);
      const started = Date.now();
      assert.equal(await servedManifestDigest(cache.url, 'team/single', 'v1'), image.manifest.digest);
      await sleep(1200); // past the TTL: a revalidation
      assert.equal(await servedManifestDigest(cache.url, 'team/single', 'v1'), image.manifest.digest);
      assert.equal(await servedManifestDigest(cache.url, 'team/single', image.manifest.digest), image.manifest.digest);
      assert.ok(Date.now() - started < 15_000, 'no wait for the foreign leases (a flight would wait 30 s)');
      assert.deepEqual(await upstreamCounts(upstream, 'GET', 'team/single'), { v1: 1 });
      assert.deepEqual(await upstreamCounts(upstream, 'HEAD', 'team/single'), { v1: 1 });
      assert.deepEqual(await leaseKeys(storage.driver), before);
      for (const name of names) assert.equal((await readLeaseRecord(storage.driver, name))?.holder, 'other-appliance/1/abcd');
    });
  });
}
