import assert from 'node:assert/strict';
import { rm } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import {
  cacheRequests, hostOf, inspectRaw, MANIFEST_ACCEPT, ociError, pull, seed, tryPull, writeAuths, writeHtpasswd,
} from './helpers/proxy-fixtures.js';
import { startTokenServer, type TokenServer } from './helpers/token-server.js';

/** Pull-through cache of upstreams that need credentials: htpasswd Basic auth and the Docker token flow. */

const cleanup: Array<() => Promise<unknown>> = [];
async function cleanUp(): Promise<void> {
  for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
}

async function startCache(upstream: string, authFile?: string, extra: string[] = []): Promise<RunningProcess> {
  const root = await tempDir('proxy-auth-root-');
  cleanup.push(() => rm(root, { recursive: true, force: true }));
  const args = ['--root', root, '--upstream', upstream, ...extra];
  if (authFile) args.push('--auth-file', authFile);
  const cache = await startStevedoreRegistry(args);
  cleanup.push(() => cache.stop());
  return cache;
}

async function getManifest(registry: string, ref: string): Promise<{ res: Response; ms: number }> {
  const [repo, tag] = ref.split(':') as [string, string];
  const started = Date.now();
  const res = await fetch(`${registry}/v2/${repo}/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT } });
  return { res, ms: Date.now() - started };
}

describe('pull-through cache: upstream with htpasswd (Basic) auth', () => {
  let dir: string;
  let upstream: RunningProcess & { root: string };
  const image = buildImage({ layerSizes: [2000], seed: 'auth-basic' });

  before(async () => {
    dir = await tempDir('proxy-auth-');
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    upstream = await startDistribution({ htpasswd: await writeHtpasswd(dir, 'alice', 'pa:ss:word') });
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/private:v1', [image], { creds: 'alice:pa:ss:word' });
  });
  after(cleanUp);

  it('pulls with the credentials of the auths file (key host:port or http://host:port, password with ":")', async () => {
    for (const [i, key] of [hostOf(upstream.url), `http://${hostOf(upstream.url)}`].entries()) {
      const auths = await writeAuths(dir, key, { user: 'alice', pass: 'pa:ss:word' }, `good-${i}.json`);
      const mark = upstream.output().length;
      const cache = await startCache(upstream.url, auths);
      assert.match(cache.output(), /"upstreamAuth":"credentials"/, key);
      const pulled = await pull(cache.url, 'team/private:v1');
      assert.deepEqual(pulled.manifests, [{ digest: image.manifest.digest, config: image.config.digest, layers: image.layers.map((l) => l.digest) }]);
      assert.equal((await inspectRaw(cache.url, 'team/private:v1')).digest, image.manifest.digest);
      // Basic is sent up front once learned: one challenge at most, then no more 401s.
      const mine = cacheRequests(upstream.output().slice(mark));
      assert.ok(mine.filter((r) => r.status === 401).length <= 1, JSON.stringify(mine));
      assert.ok(mine.filter((r) => r.status === 200).length >= 3);
    }
  });

  it('a wrong password answers 401 UNAUTHORIZED with a clear message, fast, with a bounded number of upstream tries', async () => {
    const auths = await writeAuths(dir, `http://${hostOf(upstream.url)}`, { user: 'alice', pass: 'wrong' }, 'bad.json');
    const mark = upstream.output().length;
    const cache = await startCache(upstream.url, auths);
    for (let i = 0; i < 3; i++) {
      const { res, ms } = await getManifest(cache.url, 'team/private:v1');
      assert.equal(res.status, 401);
      const error = await ociError(res);
      assert.equal(error.code, 'UNAUTHORIZED');
      assert.match(error.message, /rejected the configured credentials/);
      assert.ok(ms < 3000, `answered in ${ms} ms`);
    }
    const blob = await fetch(`${cache.url}/v2/team/private/blobs/${image.layers[0]!.digest}`);
    assert.equal(blob.status, 401);
    assert.equal((await ociError(blob)).code, 'UNAUTHORIZED');
    const failed = await tryPull(cache.url, 'team/private:v1', { timeoutMs: 20_000 });
    assert.notEqual(failed.code, 0);
    assert.match(failed.stderr, /rejected the configured credentials|unauthorized/i);
    // The first request learns the scheme (an anonymous try, then one with the credentials); after that,
    // each client request costs one upstream try: the refused credentials are not sent twice, nothing loops.
    const refused = cacheRequests(upstream.output().slice(mark)).filter((r) => r.status === 401);
    const manifestTries = refused.filter((r) => r.path === '/v2/team/private/manifests/v1').length;
    assert.equal(refused.filter((r) => r.path.includes('/blobs/')).length, 1);
    assert.ok(manifestTries >= 4 && manifestTries <= 6, `${manifestTries} upstream 401s for 3 GETs and one skopeo pull`);
    // Refused credentials mean the upstream is up: the circuit breaker stays closed.
    const again = await getManifest(cache.url, 'team/private:v1');
    assert.equal((await ociError(again.res)).code, 'UNAUTHORIZED');
  });

  it('no credentials for an upstream that needs them: 401 UNAUTHORIZED that says to add them', async () => {
    const cache = await startCache(upstream.url);
    const { res } = await getManifest(cache.url, 'team/private:v1');
    assert.equal(res.status, 401);
    const error = await ociError(res);
    assert.equal(error.code, 'UNAUTHORIZED');
    assert.match(error.message, /requires credentials; add them to the auths file/);
  });
});

describe('pull-through cache: upstream behind a token server', () => {
  let dir: string;
  let ts: TokenServer;
  let upstream: RunningProcess & { root: string };
  const one = buildImage({ layerSizes: [1500, 2500], seed: 'auth-token-one' });
  const two = buildImage({ layerSizes: [1800], seed: 'auth-token-two' });

  before(async () => {
    dir = await tempDir('proxy-token-');
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    ts = await startTokenServer({ users: { puller: 's3cret' } });
    cleanup.push(() => ts.stop());
    upstream = await startDistribution({ token: ts.distributionConfig });
    cleanup.push(() => upstream.stop());
    await seed(upstream.url, 'team/one:v1', [one], { creds: 'puller:s3cret' });
    await seed(upstream.url, 'team/two:v1', [two], { creds: 'puller:s3cret' });
  });
  after(cleanUp);

  it('pulls work, and one token per scope serves many pulls', async () => {
    const auths = await writeAuths(dir, hostOf(upstream.url), { user: 'puller', pass: 's3cret' }, 'token.json');
    const cache = await startCache(upstream.url, auths, ['--tag-ttl', '0s']);
    const mark = ts.requests.length;
    const expectedOne = [{ digest: one.manifest.digest, config: one.config.digest, layers: one.layers.map((l) => l.digest) }];
    const expectedTwo = [{ digest: two.manifest.digest, config: two.config.digest, layers: two.layers.map((l) => l.digest) }];
    assert.deepEqual((await pull(cache.url, 'team/one:v1')).manifests, expectedOne);
    // Concurrent first pulls of another repository, then many more of both (tag TTL 0: each one revalidates upstream).
    const pulls = await Promise.all([1, 2, 3].map(() => pull(cache.url, 'team/two:v1')));
    for (const p of pulls) assert.deepEqual(p.manifests, expectedTwo);
    for (let i = 0; i < 3; i++) {
      assert.deepEqual((await pull(cache.url, 'team/one:v1')).manifests, expectedOne);
      assert.deepEqual((await pull(cache.url, 'team/two:v1')).manifests, expectedTwo);
    }
    const issued = ts.requests.slice(mark);
    assert.deepEqual(issued.map((r) => r.status), issued.map(() => 200));
    assert.ok(issued.every((r) => r.user === 'puller'));
    assert.deepEqual(issued.map((r) => r.scope).sort(), ['repository:team/one:pull', 'repository:team/two:pull']);
    const revalidations = cacheRequests(upstream.output()).filter((r) => r.method === 'HEAD' && r.path.includes('/manifests/v1'));
    assert.ok(revalidations.length >= 6, 'the tags really were revalidated upstream with the cached tokens');
  });

  it('concurrent first requests of a cold worker share one token request', async () => {
    const auths = await writeAuths(dir, hostOf(upstream.url), { user: 'puller', pass: 's3cret' }, 'token-burst.json');
    const cache = await startCache(upstream.url, auths);
    const mark = ts.requests.length;
    const blobs = [one.config, ...one.layers];
    const responses = await Promise.all([
      ...blobs.map((b) => fetch(`${cache.url}/v2/team/one/blobs/${b.digest}`)),
      fetch(`${cache.url}/v2/team/one/manifests/v1`, { headers: { accept: MANIFEST_ACCEPT } }),
    ]);
    assert.deepEqual(responses.map((r) => r.status), responses.map(() => 200));
    for (const [i, b] of blobs.entries()) assert.deepEqual(Buffer.from(await responses[i]!.arrayBuffer()), b.data);
    assert.deepEqual(ts.requests.slice(mark).map((r) => r.scope), ['repository:team/one:pull']);
  });

  it('credentials the token server refuses: 401 UNAUTHORIZED naming the token service, a bounded number of token requests', async () => {
    const auths = await writeAuths(dir, hostOf(upstream.url), { user: 'puller', pass: 'nope' }, 'token-bad.json');
    const cache = await startCache(upstream.url, auths);
    const mark = ts.requests.length;
    for (let i = 0; i < 3; i++) {
      const { res, ms } = await getManifest(cache.url, 'team/one:v1');
      assert.equal(res.status, 401);
      const error = await ociError(res);
      assert.equal(error.code, 'UNAUTHORIZED');
      assert.match(error.message, /token service of upstream .* rejected the configured credentials/);
      assert.ok(ms < 3000);
    }
    const refused = ts.requests.slice(mark);
    assert.equal(refused.length, 3, 'one token request per client request');
    assert.ok(refused.every((r) => r.status === 401 && r.presentedUser === 'puller'));
  });
});
