import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, type RunningProcess } from './helpers/processes.js';
import {
  blobGets, distributionBlobPath, fillLeftovers, getAndHangUp, isStored, manifestDigest, ociError, pull, readStoredBlob, requestCounts, seed, sha256,
  startCacheOn, startSlowRelay, tryPull, waitStored,
} from './helpers/proxy-fixtures.js';
import { STORAGE_KINDS, testStorage, type StorageKind, type TestStorage } from './helpers/storage-targets.js';

/**
 * The pull-through cache verifies what its upstream sends, and serves byte ranges of blobs however
 * far they are cached. On each storage driver.
 */

const cleanup: Array<() => Promise<unknown>> = [];
async function cleanUp(): Promise<void> {
  for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
}

async function startCache(kind: StorageKind, upstream: string, extra: string[] = []): Promise<RunningProcess & { storage: TestStorage }> {
  const storage = await testStorage(kind);
  cleanup.push(() => storage.cleanup());
  const cache = await startCacheOn(storage, upstream, extra);
  cleanup.push(() => cache.stop());
  return Object.assign(cache, { storage });
}

const flipped = (data: Buffer): Buffer => Buffer.from(data.map((b) => b ^ 0xff));

for (const kind of STORAGE_KINDS) {
  describe(`pull-through cache on ${kind}: an upstream that serves corrupt content`, () => {
    let upstream: RunningProcess & { root: string };
    let cache: RunningProcess & { storage: TestStorage };
    const image = buildImage({ layerSizes: [200_000], seed: `integrity-corrupt-${kind}` });
    const layer = image.layers[0]!;
    const other = buildImage({ layerSizes: [1000], seed: `integrity-manifest-${kind}` });

    before(async () => {
      upstream = await startDistribution();
      cleanup.push(() => upstream.stop());
      await seed(upstream.url, 'team/corrupt:v1', [image]);
      await seed(upstream.url, 'team/badmanifest:v1', [other]);
      cache = await startCache(kind, upstream.url);
      // Same length, different bytes: distribution serves them as they are.
      await writeFile(distributionBlobPath(upstream.root, layer.digest), flipped(layer.data));
    });
    after(cleanUp);

    it('a blob whose bytes do not match its digest: the client\'s transfer breaks, nothing is cached', async () => {
      const res = await fetch(`${cache.url}/v2/team/corrupt/blobs/${layer.digest}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), String(layer.size));
      await assert.rejects(res.arrayBuffer(), 'the body must not complete: the client cannot tell bad bytes from good ones');
      // The failure is logged, and neither the blob nor a temp file, spool or incomplete upload stays behind.
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.ok(cache.logLines().some((l) => l.msg === 'cache fill failed; nothing cached' && l.digest === layer.digest));
      assert.equal(await isStored(cache.storage, layer.digest), false);
      assert.deepEqual(await fillLeftovers(cache.storage), []);

      // A second request tries the upstream again (failures are not remembered), and fails the same way.
      const again = await fetch(`${cache.url}/v2/team/corrupt/blobs/${layer.digest}`);
      assert.equal(again.status, 200);
      await assert.rejects(again.arrayBuffer());
      assert.equal(blobGets(upstream.output(), 'team/corrupt').get(layer.digest), 2);

      const failed = await tryPull(cache.url, 'team/corrupt:v1', { timeoutMs: 20_000 });
      assert.notEqual(failed.code, 0, 'skopeo must not accept the image');
      assert.equal(await isStored(cache.storage, layer.digest), false);
    });

    it('once the upstream is fixed, the next request fetches and caches the right bytes', async () => {
      await writeFile(distributionBlobPath(upstream.root, layer.digest), layer.data);
      const res = await fetch(`${cache.url}/v2/team/corrupt/blobs/${layer.digest}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('docker-content-digest'), layer.digest);
      const body = Buffer.from(await res.arrayBuffer());
      assert.equal(sha256(body), layer.digest);
      const pulled = await pull(cache.url, 'team/corrupt:v1');
      assert.deepEqual(pulled.manifests, [{ digest: image.manifest.digest, config: image.config.digest, layers: [layer.digest] }]);
      assert.deepEqual(await readStoredBlob(cache.storage, layer.digest), layer.data);
    });

    it('a manifest whose bytes do not match its digest: 502 DIGEST_INVALID, nothing cached', async () => {
      // Change one hex digit of the config digest inside the manifest: still valid JSON of the same length.
      const path = distributionBlobPath(upstream.root, other.manifest.digest);
      const text = other.manifest.data.toString('utf8');
      const at = text.indexOf(other.config.digest.slice(7)) + 10;
      const tampered = Buffer.from(`${text.slice(0, at)}${text[at] === '0' ? '1' : '0'}${text.slice(at + 1)}`);
      assert.equal(tampered.length, other.manifest.data.length);
      await writeFile(path, tampered);
      for (const ref of ['v1', other.manifest.digest]) {
        const res = await fetch(`${cache.url}/v2/team/badmanifest/manifests/${ref}`, { headers: { accept: other.manifest.mediaType } });
        assert.equal(res.status, 502, ref);
        const error = await ociError(res);
        assert.equal(error.code, 'DIGEST_INVALID');
        assert.match(error.message, /does not match its digest; nothing was cached/);
      }
      assert.equal(await isStored(cache.storage, other.manifest.digest), false);
      await writeFile(path, other.manifest.data);
      const fixed = await manifestDigest(cache.url, 'team/badmanifest', 'v1', 'GET');
      assert.equal(fixed.status, 200);
      assert.equal(fixed.digest, other.manifest.digest);
    });
  });

  describe(`pull-through cache on ${kind}: byte ranges of blobs`, () => {
    let upstream: RunningProcess & { root: string };
    let cache: RunningProcess & { storage: TestStorage };
    const image = buildImage({ layerSizes: [300_000, 300_000, 200_000, 1_000_000], seed: `integrity-range-${kind}` });
    const [a, b, c, big] = image.layers as [typeof image.layers[0], typeof image.layers[0], typeof image.layers[0], typeof image.layers[0]];

    before(async () => {
      upstream = await startDistribution();
      cleanup.push(() => upstream.stop());
      await seed(upstream.url, 'team/ranges:v1', [image]);
      cache = await startCache(kind, upstream.url);
    });
    after(cleanUp);

    const get = (registry: string, digest: string, range?: string, method = 'GET') =>
      fetch(`${registry}/v2/team/ranges/blobs/${digest}`, { method, headers: range ? { range } : {} });

    it('bytes=100-199 of an uncached blob: 206 with exactly those bytes', async () => {
      assert.equal(await isStored(cache.storage, a.digest), false);
      const res = await get(cache.url, a.digest, 'bytes=100-199');
      assert.equal(res.status, 206);
      assert.equal(res.headers.get('content-range'), `bytes 100-199/${a.size}`);
      assert.equal(res.headers.get('content-length'), '100');
      assert.equal(res.headers.get('docker-content-digest'), a.digest);
      assert.deepEqual(Buffer.from(await res.arrayBuffer()), a.data.subarray(100, 200));
    });

    it('bytes=N- (resume) of an uncached blob, then of the cached one', async () => {
      const n = 123_457;
      const cold = await get(cache.url, b.digest, `bytes=${n}-`);
      assert.equal(cold.status, 206);
      assert.equal(cold.headers.get('content-range'), `bytes ${n}-${b.size - 1}/${b.size}`);
      assert.deepEqual(Buffer.from(await cold.arrayBuffer()), b.data.subarray(n));
      // The fill went on to the whole blob: it is cached now, and ranges come from disk.
      await waitStored(cache.storage, b.digest);
      const warm = await get(cache.url, b.digest, `bytes=${n}-`);
      assert.equal(warm.status, 206);
      assert.equal(warm.headers.get('content-range'), `bytes ${n}-${b.size - 1}/${b.size}`);
      assert.deepEqual(Buffer.from(await warm.arrayBuffer()), b.data.subarray(n));
      const middle = await get(cache.url, b.digest, 'bytes=100-199');
      assert.deepEqual(Buffer.from(await middle.arrayBuffer()), b.data.subarray(100, 200));
      assert.equal(blobGets(upstream.output(), 'team/ranges').get(b.digest), 1);
    });

    it('HEAD of an uncached blob asks the upstream with HEAD and fetches nothing; an unsatisfiable range is 416', async () => {
      const head = await get(cache.url, c.digest, undefined, 'HEAD');
      assert.equal(head.status, 200);
      assert.equal(head.headers.get('content-length'), String(c.size));
      assert.equal(head.headers.get('docker-content-digest'), c.digest);
      assert.equal(blobGets(upstream.output(), 'team/ranges').get(c.digest), undefined);
      assert.equal(requestCounts(upstream.output(), 'HEAD', '/v2/team/ranges/blobs/').get(c.digest), 1);
      const beyond = await get(cache.url, c.digest, `bytes=${c.size}-`);
      assert.equal(beyond.status, 416);
      assert.equal(beyond.headers.get('content-range'), `bytes */${c.size}`);
      assert.equal((await ociError(beyond)).code, 'SIZE_INVALID');
    });

    // Driver-independent (the fill's memory window and spool); S3's spool reads: blob-fill.test.ts.
    it('ranges of a blob whose fill is still in flight are served from it, with one upstream GET', { skip: kind !== 'filesystem' && 'filesystem run only' }, async () => {
      // A second cache behind a 1 MB/s link: the 1 MB layer takes about a second to arrive.
      const relay = await startSlowRelay(upstream.port, 1_000_000);
      cleanup.push(() => relay.stop());
      const slow = await startCache(kind, relay.url);
      const mark = upstream.output().length;
      const full = await get(slow.url, big.digest);
      assert.equal(full.status, 200);
      assert.equal(full.headers.get('content-length'), String(big.size));
      const fullBody = full.arrayBuffer();

      const tail = big.size - 1000;
      const [resume, early, late] = await Promise.all([
        get(slow.url, big.digest, `bytes=${tail}-`),
        get(slow.url, big.digest, 'bytes=100-199'),
        get(slow.url, big.digest, `bytes=${big.size - 600_000}-${big.size - 500_001}`),
      ]);
      // Headers arrived while the blob was not yet committed: these requests joined the running fill.
      assert.equal(await isStored(slow.storage, big.digest), false, 'the fill should still be running');
      assert.equal(resume.status, 206);
      assert.equal(resume.headers.get('content-range'), `bytes ${tail}-${big.size - 1}/${big.size}`);
      assert.equal(early.status, 206);
      assert.equal(late.status, 206);
      assert.deepEqual(Buffer.from(await early.arrayBuffer()), big.data.subarray(100, 200));
      assert.deepEqual(Buffer.from(await late.arrayBuffer()), big.data.subarray(big.size - 600_000, big.size - 500_000));
      assert.deepEqual(Buffer.from(await resume.arrayBuffer()), big.data.subarray(tail));
      assert.equal(sha256(Buffer.from(await fullBody)), big.digest);
      assert.equal(blobGets(upstream.output().slice(mark), 'team/ranges').get(big.digest), 1);
    });

    it('a client that goes away does not stop the fill; one gone for longer than --fill-timeout does', async () => {
      const relay = await startSlowRelay(upstream.port, 1_000_000);
      cleanup.push(() => relay.stop());
      const patient = await startCache(kind, relay.url);
      const hasty = await startCache(kind, relay.url, ['--fill-timeout', '200ms']);
      const mark = upstream.output().length;
      for (const cache of [patient, hasty]) {
        const res = await getAndHangUp(`${cache.url}/v2/team/ranges/blobs/${big.digest}`);
        assert.equal(res.status, 200);
        assert.equal(res.headers['content-length'], String(big.size));
      }
      // The patient cache finishes the download on its own and keeps the blob; the hasty one gives up.
      await waitStored(patient.storage, big.digest);
      assert.deepEqual(await readStoredBlob(patient.storage, big.digest), big.data);
      for (let i = 0; i < 40 && !hasty.logLines().some((l) => l.msg === 'cache fill failed; nothing cached'); i++) await new Promise((r) => setTimeout(r, 50));
      const failed = hasty.logLines().find((l) => l.msg === 'cache fill failed; nothing cached');
      assert.match(String(failed?.err), /cache fill abandoned: no client for too long/);
      assert.equal(await isStored(hasty.storage, big.digest), false);
      assert.deepEqual(await fillLeftovers(hasty.storage), []);
      assert.equal(blobGets(upstream.output().slice(mark), 'team/ranges').get(big.digest), 2, 'one download per cache');
      // Served from disk by the patient cache: no new upstream request.
      const again = await fetch(`${patient.url}/v2/team/ranges/blobs/${big.digest}`);
      assert.equal(sha256(Buffer.from(await again.arrayBuffer())), big.digest);
      assert.equal(blobGets(upstream.output().slice(mark), 'team/ranges').get(big.digest), 2);
    });
  });
}
