import assert from 'node:assert/strict';
import { readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseDigest } from '../lib/oci/digest.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { pushImage, sha256, skopeoOk } from './helpers/hosted.js';
import { buildImage } from './helpers/oci-image.js';
import { startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import { testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * How a worker on S3 serves blob bytes (lib/storage/remote-blob-source.ts): STEVEDORE_S3_REDIRECT
 * sends clients to a presigned URL of the object; STEVEDORE_LOCAL_CACHE_DIR keeps verified copies of
 * hot blobs on local disk and serves them from there.
 */

const running: RunningProcess[] = [];
const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const proc of running.splice(0)) await proc.stop('SIGKILL').catch(() => {});
  for (const cleanup of cleanups.splice(0)) await cleanup();
});

async function workerOn(store: TestStorage, env: Record<string, string>): Promise<RunningProcess> {
  const worker = await startStevedoreRegistry(['--root', store.root, ...store.args], { ...store.env, ...env });
  running.push(worker);
  return worker;
}

async function s3Store(): Promise<TestStorage> {
  const store = await testStorage('s3');
  cleanups.push(() => store.cleanup());
  return store;
}

const image = buildImage({ layerSizes: [2000, 400_000], seed: 's3-serving' });
const large = image.layers[1]!;
const small = image.layers[0]!;

describe('worker on S3: blob serving', () => {
  it('STEVEDORE_S3_REDIRECT: a large blob GET is a 307 to a presigned URL that serves the blob (and its ranges); HEAD and small blobs are answered', async () => {
    const store = await s3Store();
    const worker = await workerOn(store, { STEVEDORE_S3_REDIRECT: 'true', STEVEDORE_S3_REDIRECT_TTL: '2m' });
    await pushImage(worker.url, 'team/app', 'v1', image);

    const res = await fetch(`${worker.url}/v2/team/app/blobs/${large.digest}`, { redirect: 'manual' });
    assert.equal(res.status, 307);
    assert.equal(res.headers.get('docker-content-digest'), large.digest);
    const location = res.headers.get('location');
    assert.ok(location?.startsWith(process.env.AWS_ENDPOINT_URL ?? 'http'), String(location));
    assert.match(location!, /X-Amz-Expires=120/);
    const fromStore = Buffer.from(await (await fetch(location!)).arrayBuffer());
    assert.equal(sha256(fromStore), large.digest, 'the store serves the blob itself');
    const ranged = await fetch(location!, { headers: { Range: 'bytes=100-199' } });
    assert.equal(ranged.status, 206);
    assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(large.data.subarray(100, 200)));

    // HEAD is answered by the registry (sizes, digest), small blobs from memory.
    const head = await fetch(`${worker.url}/v2/team/app/blobs/${large.digest}`, { method: 'HEAD', redirect: 'manual' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(large.size));
    const smallRes = await fetch(`${worker.url}/v2/team/app/blobs/${small.digest}`, { redirect: 'manual' });
    assert.equal(smallRes.status, 200);
    assert.equal(sha256(Buffer.from(await smallRes.arrayBuffer())), small.digest);
    // Not linked in this repository: still 404, no redirect.
    const other = await fetch(`${worker.url}/v2/other/app/blobs/${large.digest}`, { redirect: 'manual' });
    assert.equal(other.status, 404);

    // A real client follows the redirect to the store.
    const out = await tempDir('s3-redirect-pull-');
    cleanups.push(() => rm(out, { recursive: true, force: true }));
    await skopeoOk(['--insecure-policy', 'copy', '--quiet', '--src-tls-verify=false', `docker://${worker.url.slice(7)}/team/app:v1`, `oci:${out}:v1`]);
    const stored = await readdir(join(out, 'blobs', 'sha256'));
    assert.ok(stored.includes(large.digest.slice(7)), 'skopeo stored the redirected layer');
  });

  it('STEVEDORE_LOCAL_CACHE_DIR: a blob read once is served from local disk, verified; ranges too; the store is not read again', async () => {
    const store = await s3Store();
    const cacheDir = join(store.root, 'hot');
    const worker = await workerOn(store, { STEVEDORE_LOCAL_CACHE_DIR: cacheDir, STEVEDORE_LOCAL_CACHE_MAXSIZE: '64MiB' });
    await pushImage(worker.url, 'team/app', 'v1', image);

    const first = Buffer.from(await (await fetch(`${worker.url}/v2/team/app/blobs/${large.digest}`)).arrayBuffer());
    assert.equal(sha256(first), large.digest);
    let cached: string[] = [];
    for (let i = 0; i < 50 && !cached.includes(`sha256-${large.digest.slice(7)}`); i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      cached = await readdir(cacheDir);
    }
    assert.ok(cached.includes(`sha256-${large.digest.slice(7)}`), `kept locally: ${cached.join(', ')}`);

    // Remove the object from the store behind the worker's back: within the worker's 5 s stat
    // trust, the next GETs can only be served from the local copy.
    const layout = new StorageLayout(store.root);
    await store.driver.delete(layout.blobKey(parseDigest(large.digest)));
    const again = await fetch(`${worker.url}/v2/team/app/blobs/${large.digest}`);
    assert.equal(again.status, 200);
    assert.equal(sha256(Buffer.from(await again.arrayBuffer())), large.digest, 'served from the local copy');
    const ranged = await fetch(`${worker.url}/v2/team/app/blobs/${large.digest}`, { headers: { Range: 'bytes=1000-1999' } });
    assert.equal(ranged.status, 206);
    assert.ok(Buffer.from(await ranged.arrayBuffer()).equals(large.data.subarray(1000, 2000)));
  });
});
