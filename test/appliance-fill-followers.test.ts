import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { sha256, startAppliance, type Appliance } from './helpers/appliance.js';
import { startThrottledRelay } from './helpers/faults.js';
import { buildImage } from './helpers/oci-image.js';
import { distributionRequests, startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';
import { seed } from './helpers/proxy-fixtures.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Concurrent GETs of a blob the cache is still fetching (services/gateway/src/fill-followers.ts), through
 * the whole appliance, with the upstream (docker-registry) behind an 8 MB/s link so the fill is in
 * progress when the later clients arrive: those are served from the store by the gateway once the fill
 * is stored; a fill that takes longer than the wait is joined through the worker; a failed first request
 * does not hold the others back.
 */

const MiB = 1024 * 1024;
const LINK_BYTES_PER_S = 8_000_000;

for (const kind of STORAGE_KINDS) describe(`appliance: later clients of a blob being fetched (store on ${kind})`, () => {
  let work: string;
  let storage: TestStorage;
  let upstream: RunningProcess;
  let relay: Awaited<ReturnType<typeof startThrottledRelay>>;
  let app: Appliance;
  // ~0.5 s over the link: well within the followers' wait.
  const quick = buildImage({ layerSizes: [4 * MiB], seed: `followers-quick-${kind}` });
  // ~3 s over the link: longer than the wait (2 s).
  const slow = buildImage({ layerSizes: [24 * MiB], seed: `followers-slow-${kind}` });

  before(async () => {
    work = await tempDir('fill-followers-');
    upstream = await startDistribution();
    await seed(upstream.url, 'team/quick:v1', [quick]);
    await seed(upstream.url, 'team/slow:v1', [slow]);
    relay = await startThrottledRelay(upstream.port, LINK_BYTES_PER_S);
    storage = await testStorage(kind);
    app = await startAppliance({ upstreams: [`127.0.0.1:${relay.port}`], aliases: `up=127.0.0.1:${relay.port}`, tls: false, auth: false, env: storage.env });
  });

  after(async () => {
    await app?.stop();
    await relay?.stop();
    await upstream?.stop();
    await storage?.cleanup();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** The gateway's cache hit and miss counters for the upstream. */
  const cacheCounts = async () => {
    const text = (await app.call('GET', '/metrics')).text();
    const count = (result: string) => Number(new RegExp(`^stevedore_cache_requests_total\\{upstream="127.0.0.1:${relay.port}",result="${result}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    return { hit: count('hit'), miss: count('miss') };
  };
  const blobGets = (mark: number, digest: string) => distributionRequests(upstream.output().slice(mark)).filter((r) => r.method === 'GET' && r.path.endsWith(`/blobs/${digest}`)).length;
  /** `count` GETs of one blob, each started `staggerMs` after the previous: status, the bytes' digest, and when each ended. */
  const concurrentGets = async (path: string, count: number, staggerMs: number) => {
    const started = Date.now();
    return Promise.all(Array.from({ length: count }, async (_, i) => {
      await new Promise((resolve) => setTimeout(resolve, i * staggerMs));
      const res = await app.call('GET', path, { timeoutMs: 30_000 });
      return { status: res.status, digest: sha256(res.body), endedMs: Date.now() - started, text: res.status === 200 ? '' : res.text() };
    }));
  };

  it('6 clients of a blob being fetched: each gets it whole and verified, one upstream GET; the 5 later ones are served from the store', async () => {
    const layer = quick.layers[0]!;
    const [mark, before] = [upstream.output().length, await cacheCounts()];
    const results = await concurrentGets(`/v2/up/team/quick/blobs/${layer.digest}`, 6, 40);
    for (const r of results) {
      assert.equal(r.status, 200, r.text);
      assert.equal(r.digest, layer.digest);
    }
    assert.equal(blobGets(mark, layer.digest), 1);
    const counts = await cacheCounts();
    // Through the worker, a client joining a fill is a miss; from the store (the gateway), a hit.
    assert.deepEqual({ hit: counts.hit - before.hit, miss: counts.miss - before.miss }, { hit: 5, miss: 1 });
  });

  it('a fill longer than the wait: the later clients join it through the worker; one upstream GET', async () => {
    const layer = slow.layers[0]!;
    const [mark, before] = [upstream.output().length, await cacheCounts()];
    const results = await concurrentGets(`/v2/up/team/slow/blobs/${layer.digest}`, 3, 100);
    for (const r of results) {
      assert.equal(r.status, 200, r.text);
      assert.equal(r.digest, layer.digest);
    }
    assert.equal(blobGets(mark, layer.digest), 1);
    const counts = await cacheCounts();
    assert.deepEqual({ hit: counts.hit - before.hit, miss: counts.miss - before.miss }, { hit: 0, miss: 3 });
  });

  it('a first request that fails (a blob the upstream lacks) does not hold the later ones: each gets its 404 at once', async () => {
    const missing = `sha256:${'0'.repeat(63)}1`;
    const results = await concurrentGets(`/v2/up/team/quick/blobs/${missing}`, 4, 20);
    for (const r of results) {
      assert.equal(r.status, 404);
      assert.match(r.text, /BLOB_UNKNOWN/);
    }
    assert.ok(Math.max(...results.map((r) => r.endedMs)) < 1_500, `the last 404 came after ${Math.max(...results.map((r) => r.endedMs))} ms`);
  });
});
