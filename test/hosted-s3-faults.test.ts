import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { parseDigest } from '../lib/oci/digest.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { startCuttableRelay, sleep } from './helpers/faults.js';
import { assertOciError, fetchText, pushImage, sha256, slowPatch } from './helpers/hosted.js';
import { buildImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, type RunningProcess } from './helpers/processes.js';
import { testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * The hosted worker on S3 (Ceph RGW) when things go wrong: the worker killed mid-upload (the session
 * lives in the store and continues after a restart; nothing partial becomes visible), and the store
 * unreachable (503 UNAVAILABLE with Retry-After, quickly; service comes back by itself).
 */

const running: RunningProcess[] = [];
const stores: TestStorage[] = [];

after(async () => {
  for (const proc of running.splice(0)) await proc.stop('SIGKILL').catch(() => {});
  for (const store of stores.splice(0)) await store.cleanup();
});

async function s3Store(): Promise<TestStorage> {
  const store = await testStorage('s3');
  stores.push(store);
  return store;
}

async function start(store: TestStorage, env: Record<string, string> = {}): Promise<RunningProcess> {
  const worker = await startStevedoreRegistry(['--root', store.root, ...store.args], { ...store.env, ...env });
  running.push(worker);
  return worker;
}

/** Every blob key in the store holds exactly the bytes its digest names. */
async function assertBlobsVerified(store: TestStorage): Promise<number> {
  let count = 0;
  for await (const info of store.driver.walk('blobs/')) {
    const hex = info.key.slice(info.key.lastIndexOf('/') + 1);
    const data = await store.driver.getContent(info.key);
    assert.equal(createHash('sha256').update(data).digest('hex'), hex, `${info.key} holds other bytes than its digest`);
    count++;
  }
  return count;
}

describe('hosted worker on S3: SIGKILL mid-upload', () => {
  it('a chunked upload continues after a restart from its last whole chunk; acknowledged pushes intact; nothing partial visible', async () => {
    const store = await s3Store();
    // 5 MiB parts: the killed chunk below is a multipart upload with parts in the store when the worker dies.
    const env = { STEVEDORE_S3_PART_SIZE: '5MiB' };
    const w1 = await start(store, env);
    const image = buildImage({ layerSizes: [200_000], seed: 's3-crash' });
    const manifestDigest = await pushImage(w1.url, 'crash/app', 'v1', image);

    const post = await fetch(`${w1.url}/v2/crash/app/blobs/uploads/`, { method: 'POST' });
    assert.equal(post.status, 202);
    const location = post.headers.get('location')!;
    const chunkA = randomBytes(1000);
    const chunkB = randomBytes(300_000);
    assert.equal((await fetch(`${w1.url}${location}`, { method: 'PATCH', body: chunkA, headers: { 'content-range': '0-999' } })).headers.get('range'), '0-999');
    const second = await fetch(`${w1.url}${location}`, { method: 'PATCH', body: chunkB, headers: { 'content-range': `1000-${1000 + chunkB.length - 1}` } });
    assert.equal(second.status, 202);
    const acknowledged = 1000 + chunkB.length;
    assert.equal(second.headers.get('range'), `0-${acknowledged - 1}`);

    // The third chunk never completes: the worker dies after a part of it reached the store.
    const partial = randomBytes(6 * 1024 * 1024);
    const slow = slowPatch(w1.port, location, partial);
    const deadline = Date.now() + 15_000;
    let inFlight = 0;
    while (inFlight === 0) {
      assert.ok(Date.now() < deadline, 'the chunk never started a multipart upload in the store');
      for await (const write of store.driver.listIncompleteWrites()) if (write.key?.startsWith('_uploads/')) inFlight++;
      if (inFlight === 0) await sleep(50);
    }
    assert.equal(await w1.stop('SIGKILL'), null);
    assert.match(String((await slow.failed).message), /socket hang up|ECONNRESET|EPIPE/);

    const w2 = await start(store, env);
    const layout = new StorageLayout(store.root);
    for (const digest of [sha256(Buffer.concat([chunkA, chunkB, partial])), sha256(partial), sha256(Buffer.concat([chunkA, chunkB]))]) {
      assertOciError(await fetchText(`${w2.url}/v2/crash/app/blobs/${digest}`), 404, 'BLOB_UNKNOWN', digest);
      await assert.rejects(store.driver.stat(layout.blobKey(parseDigest(digest))), /not found/);
    }
    const status = await fetch(`${w2.url}${location}`);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), `0-${acknowledged - 1}`);

    // The session continues on the new worker (which has no running hash: it re-reads the chunks).
    const chunkC = randomBytes(500);
    const resumed = await fetch(`${w2.url}${location}`, { method: 'PATCH', body: chunkC, headers: { 'content-range': `${acknowledged}-${acknowledged + 499}` } });
    assert.equal(resumed.status, 202);
    const blob = Buffer.concat([chunkA, chunkB, chunkC]);
    const put = await fetch(`${w2.url}${location}?digest=${sha256(blob)}`, { method: 'PUT' });
    assert.equal(put.status, 201, await put.text());
    assert.deepEqual(Buffer.from(await (await fetch(`${w2.url}/v2/crash/app/blobs/${sha256(blob)}`)).arrayBuffer()), blob);

    // The push acknowledged before the kill is whole.
    const manifest = await fetch(`${w2.url}/v2/crash/app/manifests/v1`, { headers: { accept: image.manifest.mediaType } });
    assert.equal(manifest.status, 200);
    assert.equal(manifest.headers.get('docker-content-digest'), manifestDigest);
    for (const part of [image.config, ...image.layers]) {
      const res = await fetch(`${w2.url}/v2/crash/app/blobs/${part.digest}`);
      assert.equal(sha256(Buffer.from(await res.arrayBuffer())), part.digest);
    }
    // config, layer, the manifest and the resumed blob; each holds exactly its digest's bytes.
    assert.equal(await assertBlobsVerified(store), 4);
  });
});

describe('hosted worker on S3: the store unreachable', () => {
  let store: TestStorage;
  let relay: Awaited<ReturnType<typeof startCuttableRelay>>;
  let worker: RunningProcess;

  before(async () => {
    store = await s3Store();
    relay = await startCuttableRelay(Number(new URL(store.env.AWS_ENDPOINT_URL!).port));
    worker = await start(store, { AWS_ENDPOINT_URL: relay.url });
  });

  after(async () => {
    await relay?.stop();
  });

  it('answers 503 UNAVAILABLE with Retry-After within a few seconds, and serves again by itself once the store is back', async () => {
    const image = buildImage({ layerSizes: [100_000], seed: 's3-outage' });
    await pushImage(worker.url, 'down/app', 'v1', image);
    const layer = image.layers[0]!;
    const requests: Array<[string, string, RequestInit?]> = [
      ['blob GET', `/v2/down/app/blobs/${layer.digest}`],
      ['manifest GET by tag', '/v2/down/app/manifests/v1'],
      ['tags list', '/v2/down/app/tags/list'],
      ['upload start', '/v2/down/app/blobs/uploads/', { method: 'POST' }],
      ['monolithic push', `/v2/down/app/blobs/uploads/?digest=${sha256('x')}`, { method: 'POST', body: 'x' }],
      ['catalog', '/v2/_catalog'],
    ];
    // Past the worker's own short-lived caches (tags 1 s, blob stats 5 s), so every request asks the store.
    relay.cut();
    await sleep(5_100);
    for (const [what, path, init] of requests) {
      const startedAt = Date.now();
      const res = await fetchText(`${worker.url}${path}`, init);
      const ms = Date.now() - startedAt;
      assertOciError(res, 503, 'UNAVAILABLE', what);
      assert.ok(Number(res.headers.get('retry-after')) > 0, `${what}: Retry-After`);
      assert.ok(ms < 5_000, `${what}: answered after ${ms} ms`);
    }

    relay.restore();
    const deadline = Date.now() + 10_000;
    for (;;) {
      const res = await fetch(`${worker.url}/v2/down/app/blobs/${layer.digest}`);
      if (res.status === 200) {
        assert.equal(sha256(Buffer.from(await res.arrayBuffer())), layer.digest);
        break;
      }
      await res.arrayBuffer();
      assert.ok(Date.now() < deadline, `still ${res.status} 10 s after the store came back`);
      await sleep(200);
    }
    const manifest = await fetch(`${worker.url}/v2/down/app/manifests/v1`, { headers: { accept: image.manifest.mediaType } });
    assert.equal(manifest.status, 200);
    assert.equal((await fetch(`${worker.url}/v2/down/app/blobs/uploads/`, { method: 'POST' })).status, 202);
  });
});
