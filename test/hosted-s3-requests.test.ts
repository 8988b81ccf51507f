import assert from 'node:assert/strict';
import { readdir, rm } from 'node:fs/promises';
import { after, describe, it } from 'node:test';
import { startGatewayWithHostedWorker } from './helpers/gateway.js';
import { pushImage, sha256, skopeoOk } from './helpers/hosted.js';
import { buildImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { RgwLog, type S3RequestStats } from './helpers/rgw-log.js';
import { testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * What a pull costs the store, counted in Ceph RGW's own access log: a worker that knows nothing
 * yet (fresh process) reads each blob with ONE GetObject, its size taken from that answer, while
 * the repository's link is checked (routes/blobs.ts getWholeBlob): no HeadObject of a blob before
 * its read. The guarantees stay: an unlinked blob is 404, a Range is served from a stat'ed size.
 */

const running: RunningProcess[] = [];
const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const proc of running.splice(0)) await proc.stop('SIGKILL').catch(() => {});
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function workerOn(store: TestStorage): Promise<RunningProcess> {
  const worker = await startStevedoreRegistry(['--root', store.root, ...store.args], store.env);
  running.push(worker);
  return worker;
}

/** Requests of one kind and key shape (`GetObject blobs/sha256/<xx>/<hex>`), 0 when none. */
function count(stats: S3RequestStats | undefined, shape: string): number {
  return stats?.byShape[shape]?.requests ?? 0;
}

const BLOB_GET = 'GetObject blobs/sha256/<xx>/<hex>';
const BLOB_HEAD = 'HeadObject blobs/sha256/<xx>/<hex>';
const LINK_HEAD = 'HeadObject repositories/team/app/_layers/sha256/<hex>';

describe('worker on S3: store requests per pull', () => {
  it('a pull by a fresh worker reads every blob with one GetObject and no HeadObject; unlinked blobs stay 404, Range still works', async () => {
    const store = await testStorage('s3');
    cleanups.push(() => store.cleanup());
    assert.ok(store.rgwDir && store.location.kind === 's3');
    const prefix = store.location.prefix!;
    const image = buildImage({ layerSizes: [3000, 300_000, 1_200_000], seed: 's3-requests' });
    const pusher = await workerOn(store);
    await pushImage(pusher.url, 'team/app', 'v1', image);
    await pusher.stop();

    // A new process: no link, size or body cached from the push.
    const worker = await workerOn(store);
    const rgw = new RgwLog(store.rgwDir);
    const mark = await rgw.mark();
    const out = await tempDir('s3-requests-pull-');
    cleanups.push(() => rm(out, { recursive: true, force: true }));
    await skopeoOk(['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${worker.url.slice(7)}/team/app:v1`, `dir:${out}`]);
    const pulled = await readdir(out);
    const blobs = [image.config, ...image.layers];
    for (const blob of blobs) assert.ok(pulled.includes(blob.digest.slice(7)), `pulled ${blob.digest}`);

    const stats = (await rgw.since(mark)).get(prefix);
    const shapes = JSON.stringify(stats?.byShape);
    assert.equal(count(stats, BLOB_HEAD), 0, `no blob is stat'ed before it is read: ${shapes}`);
    // Every blob once, plus the manifest's own bytes (stored as a blob).
    assert.equal(count(stats, BLOB_GET), blobs.length + 1, shapes);
    assert.equal(count(stats, LINK_HEAD), blobs.length, `each link checked once: ${shapes}`);
    // Tag and revision, read alongside each other: 2 + 2 per blob + the manifest body.
    assert.equal(stats?.requests, 2 * blobs.length + 3, shapes);

    // The link is still checked on that path: a repository that does not link the blob gets 404.
    const fresh = await workerOn(store);
    const large = image.layers[2]!;
    const unlinked = await fetch(`${fresh.url}/v2/team/other/blobs/${large.digest}`);
    assert.equal(unlinked.status, 404);
    assert.equal(((await unlinked.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'BLOB_UNKNOWN');
    const missing = await fetch(`${fresh.url}/v2/team/app/blobs/sha256:${'0'.repeat(64)}`);
    assert.equal(missing.status, 404);
    await missing.arrayBuffer();
    // A Range before anything is known: the size is stat'ed first, the range read from the store.
    const ranged = await fetch(`${fresh.url}/v2/team/app/blobs/${large.digest}`, { headers: { Range: 'bytes=1000-1999' } });
    assert.equal(ranged.status, 206);
    assert.equal(ranged.headers.get('content-range'), `bytes 1000-1999/${large.size}`);
    assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(large.data.subarray(1000, 2000)));
    // Whole GETs on a fresh worker: small (read into memory) and large (streamed), exact bytes and headers.
    for (const blob of [image.layers[0]!, image.layers[1]!]) {
      const res = await fetch(`${fresh.url}/v2/team/app/blobs/${blob.digest}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), String(blob.size));
      assert.equal(res.headers.get('docker-content-digest'), blob.digest);
      assert.equal(sha256(Buffer.from(await res.arrayBuffer())), blob.digest);
    }
  });

  it('the gateway answering blob GETs from the store: one GetObject per blob, no HeadObject, the link checked', async () => {
    const store = await testStorage('s3');
    cleanups.push(() => store.cleanup());
    assert.ok(store.rgwDir && store.location.kind === 's3');
    const image = buildImage({ layerSizes: [2500, 500_000], seed: 's3-requests-gateway' });
    const pusher = await workerOn(store);
    await pushImage(pusher.url, 'team/app', 'v1', image);
    await pusher.stop();

    const dir = await tempDir('s3-requests-gateway-');
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const gateway = await startGatewayWithHostedWorker(dir, { storage: store });
    cleanups.unshift(() => gateway.close());
    const rgw = new RgwLog(store.rgwDir);
    const mark = await rgw.mark();
    const blobs = [image.config, ...image.layers];
    for (const blob of blobs) {
      const res = await fetch(`${gateway.url}/v2/team/app/blobs/${blob.digest}`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-length'), String(blob.size));
      assert.equal(sha256(Buffer.from(await res.arrayBuffer())), blob.digest);
    }
    const unlinked = await fetch(`${gateway.url}/v2/team/other/blobs/${image.layers[1]!.digest}`);
    assert.equal(unlinked.status, 404);
    await unlinked.arrayBuffer();
    const stats = (await rgw.since(mark)).get(store.location.prefix!);
    const shapes = JSON.stringify(stats?.byShape);
    assert.equal(count(stats, BLOB_HEAD), 0, `no blob is stat'ed before it is read: ${shapes}`);
    assert.equal(count(stats, LINK_HEAD), blobs.length, shapes);
    // Every blob once; the unlinked GET: one read by the gateway, dropped, and the worker's own link check.
    assert.ok(count(stats, BLOB_GET) >= blobs.length && count(stats, BLOB_GET) <= blobs.length + 2, shapes);
  });
});
