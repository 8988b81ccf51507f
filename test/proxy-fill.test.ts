import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, type RunningProcess } from './helpers/processes.js';
import {
  blobGets, distributionBlobPath, fillLeftovers, isStored, seed, sha256, sleep, startCacheOn, startSlowRelay, waitStored,
} from './helpers/proxy-fixtures.js';
import { STORAGE_KINDS, testStorage, type StorageKind, type TestStorage } from './helpers/storage-targets.js';

/**
 * The cache fill engine (services/registry/src/proxy/blob-fill.ts): clients get bytes from memory
 * while they keep up and from the spool file when they fall behind; none gets the last byte of a
 * blob that fails verification, whenever it joined and whatever range it asked for. On each storage
 * driver (on S3 the spool is a local file beside a multipart upload to the blob's key).
 */

const cleanup: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
});

async function startCache(kind: StorageKind, upstream: string): Promise<RunningProcess & { storage: TestStorage }> {
  const storage = await testStorage(kind);
  cleanup.push(() => storage.cleanup());
  const cache = await startCacheOn(storage, upstream);
  cleanup.push(() => cache.stop());
  return Object.assign(cache, { storage });
}

/** A GET whose body is counted as it arrives: how many bytes came, and whether the transfer completed or broke. */
function countedGet(url: string, headers: Record<string, string> = {}): Promise<{ res: IncomingMessage; body: Promise<{ bytes: Buffer; complete: boolean }> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, headers }, (res) => {
      const chunks: Buffer[] = [];
      const body = new Promise<{ bytes: Buffer; complete: boolean }>((settle) => {
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => settle({ bytes: Buffer.concat(chunks), complete: res.complete }));
        res.on('error', () => settle({ bytes: Buffer.concat(chunks), complete: false }));
        res.on('close', () => settle({ bytes: Buffer.concat(chunks), complete: res.complete }));
      });
      resolve({ res, body });
    });
    req.on('error', reject);
    req.end();
  });
}

for (const kind of STORAGE_KINDS) {
  describe(`cache fill on ${kind}: a blob that fails verification`, () => {
    let upstream: RunningProcess & { root: string };
    const image = buildImage({ layerSizes: [3 * 1024 * 1024], seed: `fill-corrupt-${kind}` });
    const layer = image.layers[0]!;

    before(async () => {
      upstream = await startDistribution();
      cleanup.push(() => upstream.stop());
      await seed(upstream.url, 'team/corrupt:v1', [image]);
      const flipped = Buffer.from(layer.data);
      flipped[flipped.length - 1] ^= 0xff; // only the last byte differs
      await writeFile(distributionBlobPath(upstream.root, layer.digest), flipped);
    });

    it('no client gets the last byte: the first, late joiners, and a Range of the tail', async () => {
      // 4 MB/s: the 3 MiB layer stays in flight long enough for the others to join.
      const relay = await startSlowRelay(upstream.port, 4_000_000);
      cleanup.push(() => relay.stop());
      const cache = await startCache(kind, relay.url);
      const url = `${cache.url}/v2/team/corrupt/blobs/${layer.digest}`;
      const first = await countedGet(url);
      assert.equal(first.res.statusCode, 200);
      await sleep(200);
      const [late, tail] = await Promise.all([countedGet(url), countedGet(url, { range: `bytes=${layer.size - 10}-` })]);
      assert.equal(late.res.statusCode, 200);
      assert.equal(tail.res.statusCode, 206);
      for (const [what, got, length] of [['first', first, layer.size], ['late joiner', late, layer.size], ['tail range', tail, 10]] as const) {
        const { bytes, complete } = await got.body;
        assert.equal(complete, false, `${what}: the transfer must break`);
        assert.ok(bytes.length < length, `${what}: got ${bytes.length} of ${length} bytes`);
        // What did arrive is the upstream's bytes, up to the one that was withheld.
        const offset = what === 'tail range' ? layer.size - 10 : 0;
        assert.ok(bytes.equals(layer.data.subarray(offset, offset + bytes.length)), `${what}: bytes as sent`);
      }
      // Everything but the last byte had arrived before the digest was known: the withholding was real.
      assert.equal((await first.body).bytes.length, layer.size - 1);
      assert.equal(await isStored(cache.storage, layer.digest), false);
      // Nothing of the failed fill is left: no temp file or spool, no incomplete multipart upload.
      for (let i = 0; i < 40 && (await fillLeftovers(cache.storage)).length > 0; i++) await sleep(50);
      assert.deepEqual(await fillLeftovers(cache.storage), []);
      assert.equal(blobGets(upstream.output(), 'team/corrupt').get(layer.digest), 1);
    });
  });

  describe(`cache fill on ${kind}: a slow client`, () => {
    let upstream: RunningProcess & { root: string };
    const image = buildImage({ layerSizes: [24 * 1024 * 1024], seed: `fill-slow-client-${kind}` });
    const layer = image.layers[0]!;

    before(async () => {
      upstream = await startDistribution();
      cleanup.push(() => upstream.stop());
      await seed(upstream.url, 'team/slow:v1', [image]);
    });

    it('falls behind the fill and reads the rest from the file, while a fast client streams from memory; one upstream GET', async () => {
      const cache = await startCache(kind, upstream.url);
      const url = `${cache.url}/v2/team/slow/blobs/${layer.digest}`;
      const slow = await countedGet(url);
      slow.res.pause();
      const fast = await countedGet(url);
      const fastBody = await fast.body;
      assert.equal(fastBody.complete, true);
      assert.equal(sha256(fastBody.bytes), layer.digest);
      // The fill is over (the blob committed) while the slow client has read almost nothing.
      assert.equal(await waitStored(cache.storage, layer.digest), true);
      slow.res.resume();
      const slowBody = await slow.body;
      assert.equal(slowBody.complete, true);
      assert.equal(slowBody.bytes.length, layer.size);
      assert.equal(sha256(slowBody.bytes), layer.digest);
      assert.equal(blobGets(upstream.output(), 'team/slow').get(layer.digest), 1);
      for (let i = 0; i < 40 && (await fillLeftovers(cache.storage)).length > 0; i++) await sleep(50);
      assert.deepEqual(await fillLeftovers(cache.storage), [], 'the spool is gone once the slow client is served');
    });
  });
}

for (const kind of STORAGE_KINDS) {
  describe(`cache fill on ${kind}: the gateway's spool request (x-stevedore-fill-spool)`, () => {
    let upstream: RunningProcess & { root: string };
    const image = buildImage({ layerSizes: [3 * 1024 * 1024], seed: `fill-spool-${kind}` });
    const layer = image.layers[0]!;

    before(async () => {
      upstream = await startDistribution();
      cleanup.push(() => upstream.stop());
      await seed(upstream.url, 'team/spool:v1', [image]);
    });

    it('a cold blob: the spool path and size, the spool growing with the blob\'s bytes, then verified; a stored blob: 204 none', async () => {
      // 4 MB/s: the fill lasts ~0.8 s.
      const relay = await startSlowRelay(upstream.port, 4_000_000);
      cleanup.push(() => relay.stop());
      const cache = await startCache(kind, relay.url);
      const url = `${cache.url}/v2/team/spool/blobs/${layer.digest}`;
      const res = await fetch(url, { headers: { 'x-stevedore-fill-spool': '1' } });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('x-stevedore-fill-spool'), 'events');
      assert.match(String(res.headers.get('content-type')), /^application\/x-ndjson/);
      const events: Array<{ spool?: string; size?: number; written?: number; verified?: boolean; error?: string }> = [];
      let checkedSpool = false;
      let pending = '';
      for await (const chunk of res.body!) {
        pending += Buffer.from(chunk).toString('utf8');
        let newline: number;
        while ((newline = pending.indexOf('\n')) !== -1) {
          events.push(JSON.parse(pending.slice(0, newline)) as (typeof events)[number]);
          pending = pending.slice(newline + 1);
          const last = events.at(-1)!;
          // While the fill runs, the spool holds the blob's bytes as far as announced.
          if (!checkedSpool && last.written !== undefined && last.written > 0 && last.written < layer.size) {
            const spooled = await readFile(events[0]!.spool!);
            assert.ok(spooled.length >= last.written);
            assert.ok(spooled.subarray(0, last.written).equals(layer.data.subarray(0, last.written)), 'the spool holds the blob\'s bytes');
            checkedSpool = true;
          }
        }
      }
      assert.deepEqual(events[0], { spool: events[0]!.spool, size: layer.size });
      assert.ok(checkedSpool, `the spool was read while the fill ran: ${JSON.stringify(events)}`);
      const written = events.slice(1, -1).map((e) => e.written!);
      assert.ok(written.every((w, i) => i === 0 || w >= written[i - 1]!), `written grows: ${written.join(' ')}`);
      assert.equal(written.at(-1), layer.size);
      assert.deepEqual(events.at(-1), { verified: true });

      assert.equal(await waitStored(cache.storage, layer.digest), true);
      const stored = await fetch(url, { headers: { 'x-stevedore-fill-spool': '1' } });
      assert.equal(stored.status, 204);
      assert.equal(stored.headers.get('x-stevedore-fill-spool'), 'none');
      assert.equal(blobGets(upstream.output(), 'team/spool').get(layer.digest), 1);
    });
  });
}
