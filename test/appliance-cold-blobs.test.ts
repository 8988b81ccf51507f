import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { sha256, startAppliance, type Appliance } from './helpers/appliance.js';
import { startThrottledRelay, streamBlob } from './helpers/faults.js';
import { buildImage } from './helpers/oci-image.js';
import { distributionRequests, startDistribution, tempDir, type RunningProcess } from './helpers/processes.js';
import { distributionBlobPath, fillLeftovers, isStored, seed, sleep } from './helpers/proxy-fixtures.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Blobs the cache does not hold yet, through the whole appliance, with the upstream (docker-registry)
 * behind an 8 MB/s link so that fills are in progress while clients read them. The gateway sends a
 * fill's bytes from the cache worker's spool (services/gateway/src/fill-spool.ts): whole and verified,
 * ranges too, and never the last byte of a blob that fails verification. Concurrent clients
 * (services/gateway/src/fill-followers.ts): the later ones are served from the store once the fill is
 * stored; a fill that takes longer than their wait is joined; a failed first request holds none back.
 */

const MiB = 1024 * 1024;
const LINK_BYTES_PER_S = 8_000_000;

for (const kind of STORAGE_KINDS) describe(`appliance: blobs being fetched, through the gateway (store on ${kind})`, () => {
  let work: string;
  let storage: TestStorage;
  let upstream: RunningProcess & { root: string };
  let relay: Awaited<ReturnType<typeof startThrottledRelay>>;
  let app: Appliance;
  // ~0.5 s over the link: well within the followers' wait.
  const quick = buildImage({ layerSizes: [4 * MiB], seed: `followers-quick-${kind}` });
  // ~3 s over the link: longer than the wait (2 s).
  const slow = buildImage({ layerSizes: [24 * MiB], seed: `followers-slow-${kind}` });
  const ranged = buildImage({ layerSizes: [3 * MiB], seed: `cold-range-${kind}` });
  const corrupt = buildImage({ layerSizes: [3 * MiB], seed: `cold-corrupt-${kind}` });
  const headed = buildImage({ layerSizes: [2 * MiB], seed: `cold-header-${kind}` });

  before(async () => {
    work = await tempDir('fill-followers-');
    upstream = await startDistribution();
    await seed(upstream.url, 'team/quick:v1', [quick]);
    await seed(upstream.url, 'team/slow:v1', [slow]);
    await seed(upstream.url, 'team/ranged:v1', [ranged]);
    await seed(upstream.url, 'team/corrupt:v1', [corrupt]);
    await seed(upstream.url, 'team/headed:v1', [headed]);
    // Only the last byte differs: everything before it is the blob's.
    const flipped = Buffer.from(corrupt.layers[0]!.data);
    flipped[flipped.length - 1] ^= 0xff;
    await writeFile(distributionBlobPath(upstream.root, corrupt.layers[0]!.digest), flipped);
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

  /**
   * `count` clients of `layer` (of `repo`), `staggerMs` apart: each gets it whole and verified, the
   * upstream is asked once; returns how many the gateway counted as cache hits and misses. Through the
   * worker (or its spool) a client of a fill is a miss; from the store (the gateway), a hit.
   */
  const clientsOfOneFill = async (repo: string, layer: { digest: string }, count: number, staggerMs: number) => {
    const [mark, before] = [upstream.output().length, await cacheCounts()];
    const results = await concurrentGets(`/v2/up/${repo}/blobs/${layer.digest}`, count, staggerMs);
    for (const r of results) {
      assert.equal(r.status, 200, r.text);
      assert.equal(r.digest, layer.digest);
    }
    assert.equal(blobGets(mark, layer.digest), 1);
    const counts = await cacheCounts();
    return { hit: counts.hit - before.hit, miss: counts.miss - before.miss };
  };

  it('6 clients of a blob being fetched: each gets it whole and verified, one upstream GET; the 5 later ones are served from the store', async () => {
    assert.deepEqual(await clientsOfOneFill('team/quick', quick.layers[0]!, 6, 40), { hit: 5, miss: 1 });
  });

  it('a fill longer than the wait: the later clients join it; one upstream GET', async () => {
    assert.deepEqual(await clientsOfOneFill('team/slow', slow.layers[0]!, 3, 100), { hit: 0, miss: 3 });
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

  it('a blob that fails verification: the client gets every byte but the last, and a broken transfer; nothing is stored', async () => {
    const layer = corrupt.layers[0]!;
    const got = await streamBlob(`${app.url}/v2/up/team/corrupt/blobs/${layer.digest}`);
    assert.equal(got.status, 200);
    assert.equal(got.length, layer.size);
    assert.equal(got.ended, false, 'the transfer must break');
    assert.equal(got.received, layer.size - 1, 'all but the withheld last byte arrived');
    assert.equal(got.digest, sha256(layer.data.subarray(0, layer.size - 1)), 'the bytes that arrived are the upstream\'s');
    assert.equal(await isStored(storage, layer.digest), false);
    for (let i = 0; i < 40 && (await fillLeftovers(storage)).length > 0; i++) await sleep(50);
    assert.deepEqual(await fillLeftovers(storage), []);
  });

  it('a Range of a blob being fetched: 206 with exactly those bytes; then the whole blob, stored', async () => {
    const layer = ranged.layers[0]!;
    const path = `/v2/up/team/ranged/blobs/${layer.digest}`;
    const [part, whole] = await Promise.all([
      app.call('GET', path, { headers: { range: `bytes=${2 * MiB}-${2 * MiB + 99}` }, timeoutMs: 30_000 }),
      (async () => { await sleep(50); return app.call('GET', path, { timeoutMs: 30_000 }); })(),
    ]);
    assert.equal(part.status, 206, part.text());
    assert.equal(part.headers['content-range'], `bytes ${2 * MiB}-${2 * MiB + 99}/${layer.size}`);
    assert.ok(part.body.equals(layer.data.subarray(2 * MiB, 2 * MiB + 100)));
    assert.equal(whole.status, 200);
    assert.equal(sha256(whole.body), layer.digest);
  });

  it('a client\'s own x-stevedore-fill-spool header is dropped: it gets the blob, not the worker\'s progress', async () => {
    const layer = headed.layers[0]!;
    const res = await app.call('GET', `/v2/up/team/headed/blobs/${layer.digest}`, { headers: { 'x-stevedore-fill-spool': '1' }, timeoutMs: 30_000 });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-stevedore-fill-spool'], undefined);
    assert.equal(res.headers['content-type'], 'application/octet-stream');
    assert.equal(sha256(res.body), layer.digest);
  });
});
