import assert from 'node:assert/strict';
import { rm, utimes } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { digestOf } from '../lib/oci/digest.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { call, ociError, sleep } from './helpers/appliance.js';
import { callSocket, contentHeaders, startGatewayWithHostedWorker, type InProcessGateway } from './helpers/gateway.js';
import { pushBlob, pushImage } from './helpers/hosted.js';
import { buildImage, buildIndex, type BuiltImage } from './helpers/oci-image.js';
import { stopProcess, tempDir } from './helpers/processes.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * The gateway answers manifest GET/HEAD of stored manifests itself (services/gateway/src/manifest-direct.ts):
 * the answer must be the worker's, header for header; a push or delete through the gateway must be
 * visible at once; a cache worker's tag only within its TTL; everything else still reaches the worker.
 */

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';

/** Stops the hosted worker (SIGSTOP) for the duration of `body`: whatever answers then is the gateway. */
async function withWorkerStopped<T>(env: InProcessGateway, body: () => Promise<T>): Promise<T> {
  // Every thread stopped, not just the signal sent: until then the worker may still answer itself.
  await stopProcess(env.worker);
  try {
    return await body();
  } finally {
    env.worker.kill('SIGCONT');
  }
}

for (const kind of STORAGE_KINDS) {
  describe(`gateway: stored manifests answered from the store (${kind}), as the worker would answer them`, () => {
    let dir: string;
    let storage: TestStorage;
    let env: InProcessGateway;
    let image: BuiltImage;
    let digest: string;

    before(async () => {
      dir = await tempDir('gateway-manifest-direct-');
      storage = await testStorage(kind);
      env = await startGatewayWithHostedWorker(dir, { tagTtlMs: 60_000, storage });
      image = buildImage({ seed: 'direct' });
      digest = await pushImage(env.url, 'team/app', 'v1', image);
    });

    after(async () => {
      await env?.close();
      await storage?.cleanup();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it('answers GET and HEAD by tag and digest, Accept, If-None-Match and ?ns= with the worker\'s status, headers and bytes', async () => {
      const cases: Array<{ method: string; path: string; headers?: Record<string, string>; status: number }> = [
        { method: 'GET', path: '/v2/team/app/manifests/v1', status: 200 },
        { method: 'GET', path: `/v2/team/app/manifests/${digest}`, status: 200 },
        { method: 'HEAD', path: '/v2/team/app/manifests/v1', status: 200 },
        { method: 'GET', path: '/v2/team/app/manifests/v1', headers: { accept: `${DOCKER_MANIFEST}, ${OCI_MANIFEST}` }, status: 200 },
        { method: 'GET', path: '/v2/team/app/manifests/v1', headers: { accept: '*/*' }, status: 200 },
        { method: 'GET', path: '/v2/team/app/manifests/v1', headers: { 'if-none-match': `"${digest}"` }, status: 304 },
        { method: 'GET', path: '/v2/team/app/manifests/v1?ns=docker.io', status: 200 },
      ];
      for (const c of cases) {
        const viaGateway = await call(env.url, c.method, c.path, { headers: c.headers ?? {} });
        const fromWorker = await callSocket(env.plan.hosted.socketPath, c.method, c.path, c.headers);
        const what = `${c.method} ${c.path} ${JSON.stringify(c.headers ?? {})}`;
        assert.equal(viaGateway.status, c.status, `${what}: ${viaGateway.text()}`);
        assert.equal(fromWorker.status, c.status, what);
        assert.deepEqual(contentHeaders(viaGateway.headers), contentHeaders(fromWorker.headers), what);
        assert.ok(viaGateway.body.equals(fromWorker.body), `${what}: same bytes`);
      }
      // The same answers come while the worker cannot answer at all: the gateway gave them.
      const stopped = await withWorkerStopped(env, () => call(env.url, 'GET', '/v2/team/app/manifests/v1', { timeoutMs: 5_000 }));
      assert.equal(stopped.status, 200);
      assert.ok(stopped.body.equals(image.manifest.data));
      assert.equal(stopped.headers['docker-content-digest'], digest);
    });

    it('leaves to the worker what only it can answer: unknown tags and digests, Accept refusing the stored type, other repositories, bad references', async () => {
      const cases: Array<{ path: string; headers?: Record<string, string>; status: number; code: string }> = [
        { path: '/v2/team/app/manifests/absent', status: 404, code: 'MANIFEST_UNKNOWN' },
        { path: `/v2/team/app/manifests/${digestOf('absent').value}`, status: 404, code: 'MANIFEST_UNKNOWN' },
        { path: '/v2/team/app/manifests/v1', headers: { accept: DOCKER_MANIFEST }, status: 404, code: 'MANIFEST_UNKNOWN' },
        { path: '/v2/team/other/manifests/v1', status: 404, code: 'MANIFEST_UNKNOWN' },
        // Neither a tag nor a digest: names no manifest (404, OCI conformance's .INVALID_MANIFEST_NAME).
        { path: '/v2/team/app/manifests/sha256:abc', status: 404, code: 'MANIFEST_UNKNOWN' },
        { path: `/v2/team/app/manifests/${'x'.repeat(129)}`, status: 404, code: 'MANIFEST_UNKNOWN' },
        { path: '/v2/team/app/manifests/.INVALID_MANIFEST_NAME', status: 404, code: 'MANIFEST_UNKNOWN' },
      ];
      for (const c of cases) {
        const viaGateway = await call(env.url, 'GET', c.path, { headers: c.headers ?? {} });
        const fromWorker = await callSocket(env.plan.hosted.socketPath, 'GET', c.path, c.headers);
        assert.equal(viaGateway.status, c.status, `${c.path}: ${viaGateway.text()}`);
        assert.equal(ociError(viaGateway).code, c.code, c.path);
        assert.deepEqual(contentHeaders(viaGateway.headers), contentHeaders(fromWorker.headers), c.path);
        assert.equal(viaGateway.text(), fromWorker.text());
      }
      // With the worker stopped, an unknown tag is not answered by the gateway (the request waits for the worker).
      const waited = await withWorkerStopped(env, () => call(env.url, 'GET', '/v2/team/app/manifests/absent', { timeoutMs: 500 }).then(() => 'answered', () => 'waited'));
      assert.equal(waited, 'waited');
    });

    it('a push, a re-tag and a delete through the gateway are visible to the next request at once', async () => {
      const other = buildImage({ seed: 'moved' });
      for (let round = 0; round < 3; round++) {
        assert.equal((await call(env.url, 'GET', '/v2/team/app/manifests/v1')).headers['docker-content-digest'], digest);
        const moved = await pushImage(env.url, 'team/app', 'v1', other);
        const after = await call(env.url, 'GET', '/v2/team/app/manifests/v1');
        assert.equal(after.headers['docker-content-digest'], moved, `round ${round}: the tag's new digest`);
        assert.ok(after.body.equals(other.manifest.data));
        await pushImage(env.url, 'team/app', 'v1', image);
      }
      assert.equal((await call(env.url, 'GET', '/v2/team/app/manifests/v1')).status, 200);
      assert.equal((await call(env.url, 'DELETE', '/v2/team/app/manifests/v1')).status, 202);
      assert.equal((await call(env.url, 'GET', '/v2/team/app/manifests/v1')).status, 404);
      assert.equal((await call(env.url, 'GET', `/v2/team/app/manifests/${digest}`)).status, 200);
      assert.equal((await call(env.url, 'DELETE', `/v2/team/app/manifests/${digest}`)).status, 202);
      assert.equal((await call(env.url, 'GET', `/v2/team/app/manifests/${digest}`)).status, 404);
      // Put back for the other tests.
      await pushImage(env.url, 'team/app', 'v1', image);
    });

    it('a tag changed in the store by another process (seeding, GC) is seen within about a second', async () => {
      const other = buildImage({ seed: 'seeded' });
      const moved = await pushImage(env.url, 'team/app', 'seeded', other);
      assert.equal((await call(env.url, 'GET', '/v2/team/app/manifests/v1')).headers['docker-content-digest'], digest);
      const layout = new StorageLayout(env.root);
      await storage.driver.putContent(layout.tagKey('team/app', 'v1'), moved);
      await sleep(1_100);
      assert.equal((await call(env.url, 'GET', '/v2/team/app/manifests/v1')).headers['docker-content-digest'], moved);
      await storage.driver.putContent(layout.tagKey('team/app', 'v1'), digest);
      await sleep(1_100);
    });

    it('a cache worker\'s tag is answered only within the tag TTL (its key\'s modified time), by digest always; counted as cache hits', async () => {
      // The cache worker never runs: a 200 can only come from the gateway, a 503 means "sent to the worker".
      const layout = new StorageLayout(env.root, { namespace: 'up.example:5000' });
      const index = buildIndex([image]);
      await pushBlob(env.url, 'team/app', index.data, index.digest); // the bytes, shared by digest
      await storage.driver.putContent(layout.manifestRevisionKey('library/img', digestOf(index.data)), index.mediaType);
      await storage.driver.putContent(layout.tagKey('library/img', 'fresh'), index.digest);
      // An object's time cannot be set back on S3: the TTL's end is checked on the filesystem.
      const backdated = storage.kind === 'filesystem';
      if (backdated) {
        await storage.driver.putContent(layout.tagKey('library/img', 'old'), index.digest);
        const past = new Date(Date.now() - 120_000);
        await utimes(storage.root + '/' + layout.tagKey('library/img', 'old'), past, past);
      }

      const fresh = await call(env.url, 'GET', '/v2/up/library/img/manifests/fresh');
      assert.equal(fresh.status, 200, fresh.text());
      assert.equal(fresh.headers['content-type'], index.mediaType);
      assert.equal(fresh.headers['x-stevedore-cache'], undefined);
      assert.ok(fresh.body.equals(index.data));
      assert.equal((await call(env.url, 'HEAD', `/v2/up/library/img/manifests/${index.digest}`)).status, 200);
      // Same store through ?ns= (a containerd mirror) on the hosted path.
      assert.equal((await call(env.url, 'GET', '/v2/library/img/manifests/fresh?ns=up.example:5000')).status, 200);

      if (backdated) {
        const old = await call(env.url, 'GET', '/v2/up/library/img/manifests/old');
        assert.equal(old.status, 503, 'past the TTL the worker must revalidate it');
        assert.equal(ociError(old).code, 'UNAVAILABLE');
      }
      // Not in this repository of the cache: the worker's call.
      assert.equal((await call(env.url, 'GET', `/v2/up/library/other/manifests/${index.digest}`)).status, 503);
      assert.match(await env.metrics.registry.metrics(), /^stevedore_cache_requests_total\{upstream="up.example:5000",result="hit"\} 3$/m);
    });
  });
}
