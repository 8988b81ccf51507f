import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCuttableRelay } from './helpers/faults.js';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, type RunningProcess } from './helpers/processes.js';
import { blobGets, isStored, MANIFEST_ACCEPT, ociError, pull, seed, sha256, sleep, startCacheOn } from './helpers/proxy-fixtures.js';
import { testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * The cache worker's store (S3: Ceph RGW, reached through a TCP relay this test can cut) goes away:
 * what is not in the worker's memory answers 503 UNAVAILABLE with Retry-After within seconds (no
 * upstream download is started for a blob that could not be stored), and the worker serves again by
 * itself once the store is back.
 */

describe('pull-through cache on s3: the store goes away and comes back', () => {
  let upstream: RunningProcess & { root: string };
  let storage: TestStorage;
  let relay: Awaited<ReturnType<typeof startCuttableRelay>>;
  let cache: RunningProcess;
  const cached = buildImage({ layerSizes: [300_000], seed: 'store-outage-cached' });
  const uncached = buildImage({ layerSizes: [200_000], seed: 'store-outage-uncached' });

  before(async () => {
    upstream = await startDistribution();
    await seed(upstream.url, 'team/cached:v1', [cached]);
    await seed(upstream.url, 'team/uncached:v1', [uncached]);
    storage = await testStorage('s3');
    relay = await startCuttableRelay(Number(new URL(storage.env.AWS_ENDPOINT_URL!).port));
    cache = await startCacheOn({ ...storage, env: { ...storage.env, AWS_ENDPOINT_URL: relay.url } }, upstream.url);
  });
  after(async () => {
    await cache?.stop();
    await relay?.stop();
    await upstream?.stop();
    await storage?.cleanup();
  });

  it('503 UNAVAILABLE with Retry-After while the store is unreachable; served again once it is back', async (t) => {
    await pull(cache.url, 'team/cached:v1');
    const layer = cached.layers[0]!;
    const other = uncached.layers[0]!;
    assert.equal(await isStored(storage, layer.digest), true);

    relay.cut();
    // What the worker still holds in memory (small manifests, recent stats) may be answered; everything
    // else is a quick 503 with Retry-After, never a hang or a 500.
    const requests: Array<[string, string, Record<string, string>, boolean]> = [
      ['cached manifest by tag', `/v2/team/cached/manifests/v1`, { accept: MANIFEST_ACCEPT }, false],
      ['cached blob', `/v2/team/cached/blobs/${layer.digest}`, {}, false],
      ['uncached manifest by tag', `/v2/team/uncached/manifests/v1`, { accept: MANIFEST_ACCEPT }, true],
      ['uncached blob', `/v2/team/uncached/blobs/${other.digest}`, {}, true],
    ];
    const answers: string[] = [];
    for (const [what, path, headers, mustFail] of requests) {
      const started = Date.now();
      const res = await fetch(`${cache.url}${path}`, { headers });
      const ms = Date.now() - started;
      answers.push(`${what}: ${res.status} in ${ms} ms`);
      assert.ok(ms < 10_000, `${what}: answered in ${ms} ms`);
      if (res.status === 200 && !mustFail) {
        const body = Buffer.from(await res.arrayBuffer());
        assert.equal(sha256(body), path.includes('/blobs/') ? layer.digest : cached.manifest.digest, `${what}: served whole from memory`);
        continue;
      }
      assert.equal(res.status, 503, `${what}: ${res.status}`);
      assert.ok(res.headers.get('retry-after'), `${what}: Retry-After`);
      assert.equal((await ociError(res)).code, 'UNAVAILABLE', what);
    }
    t.diagnostic(answers.join('; '));
    // The uncached blob was not downloaded only to be thrown away.
    assert.equal(blobGets(upstream.output(), 'team/uncached').get(other.digest), undefined);

    relay.restore();
    let served = 0;
    for (let i = 0; i < 50 && served !== 200; i++) {
      const res = await fetch(`${cache.url}/v2/team/cached/blobs/${layer.digest}`);
      await res.arrayBuffer();
      served = res.status;
      if (served !== 200) await sleep(100);
    }
    assert.equal(served, 200, 'served again once the store is back');
    const pulled = await pull(cache.url, 'team/uncached:v1');
    assert.equal(pulled.top, uncached.manifest.digest);
    assert.equal(await isStored(storage, other.digest), true);
  });
});
