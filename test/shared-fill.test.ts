import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { buildImage } from './helpers/oci-image.js';
import { startDistribution, type RunningProcess } from './helpers/processes.js';
import { blobGets, manifestGets, pull, seed, sleep } from './helpers/proxy-fixtures.js';
import { isComplete, startLatencyRelay, startThrottledRelay, streamBlob } from './helpers/faults.js';
import { PEER_TOKEN, startPeerAppliance, type PeerAppliance } from './helpers/peer-appliances.js';
import { cephInstalled, testStorage, type TestStorage } from './helpers/storage-targets.js';
import { fillLeaseName } from '../services/registry/src/proxy/shared-fill.js';
import { leaseKey } from '../lib/storage/lease.js';
import { isStorageNotFound } from '../lib/storage/driver/driver.js';
import { parseDigest } from '../lib/oci/digest.js';

/**
 * Issue 12, pull-through: three appliances on one S3 store fetch each blob from the upstream once in
 * total. The first to miss takes the blob's fill lease in the store; the others stream that fill
 * from it through its gateway (peer token); when the filler dies mid-fill, they resume from where
 * they were, after taking the lease over. The upstream is the Debian docker-registry, whose access
 * log counts the GETs.
 */

describe('cache fills shared by the appliances on one store', { skip: cephInstalled() ? false : 'Ceph not installed' }, () => {
  let storage: TestStorage;
  let upstream: RunningProcess;
  let relay: Awaited<ReturnType<typeof startThrottledRelay>>;
  const appliances: PeerAppliance[] = [];

  before(async () => {
    storage = await testStorage('s3');
    upstream = await startDistribution();
    // The kill test needs a fill that lasts: the upstream is reached through a 6 MB/s link.
    relay = await startThrottledRelay(upstream.port!, 6_000_000);
    for (let i = 0; i < 3; i++) appliances.push(await startPeerAppliance(storage, relay.url, { STEVEDORE_FILL_LEASE_TIME: '2s' }));
  });

  after(async () => {
    await Promise.all(appliances.map((a) => a.close()));
    await relay?.stop();
    await upstream?.stop();
    await storage?.cleanup();
  });

  test('8 concurrent skopeo pulls spread over 3 appliances: one upstream GET per blob', async () => {
    const image = buildImage({ layerSizes: [3 * 1024 * 1024, 2 * 1024 * 1024, 64 * 1024], seed: 'shared-fill' });
    await seed(upstream.url, 'team/app:v1', [image]);
    const pulls = await Promise.all(Array.from({ length: 8 }, (_, i) => pull(appliances[i % 3]!.url, 'up/team/app:v1', { timeoutMs: 90_000 })));
    for (const pulled of pulls) {
      assert.equal(pulled.top, image.manifest.digest);
      assert.deepEqual(pulled.manifests, [{ digest: image.manifest.digest, config: image.config.digest, layers: image.layers.map((l) => l.digest) }]);
    }
    const gets = blobGets(upstream.output(), 'team/app');
    for (const blob of [image.config, ...image.layers]) assert.equal(gets.get(blob.digest), 1, `upstream GETs of ${blob.digest}: ${JSON.stringify([...gets])}`);
    assert.deepEqual([...manifestGets(upstream.output(), 'team/app')], [['v1', 1]], 'one upstream GET of the manifest (store flight)');
    // Every fill gave its lease back (deleted, not left behind).
    for (const blob of [image.config, ...image.layers]) {
      const lease = await storage.driver.stat(leaseKey(fillLeaseName(parseDigest(blob.digest)))).catch((err: unknown) => {
        if (isStorageNotFound(err)) return undefined;
        throw err;
      });
      assert.equal(lease, undefined, 'lease key removed');
    }
  });

  test('the filling appliance is SIGKILLed mid-fill: the others finish the blob, verified', async () => {
    const image = buildImage({ layerSizes: [12 * 1024 * 1024], seed: 'shared-fill-kill' });
    await seed(upstream.url, 'team/big:v1', [image]);
    const layer = image.layers[0]!;
    const path = `/v2/up/team/big/blobs/${layer.digest}`;
    const [A, B, C] = appliances as [PeerAppliance, PeerAppliance, PeerAppliance];
    let aReceived = 0;
    const first = streamBlob(`${A.url}${path}`, { onProgress: (n) => { aReceived = n; }, timeoutMs: 60_000 });
    while (aReceived < 1024 * 1024) await sleep(20);
    // B and C join A's fill (A holds the lease), then A dies mid-fill (worker SIGKILLed, gateway gone).
    let bReceived = 0;
    const second = streamBlob(`${B.url}${path}`, { onProgress: (n) => { bReceived = n; }, timeoutMs: 60_000 });
    const third = streamBlob(`${C.url}${path}`, { timeoutMs: 60_000 });
    while (bReceived < 2 * 1024 * 1024) await sleep(20);
    assert.ok(aReceived < layer.size / 2, `killed mid-fill (A had ${aReceived} of ${layer.size})`);
    await A.kill();
    const [a, b, c] = await Promise.all([first, second, third]);
    assert.equal(a.ended && a.received === layer.size, false, 'A\'s own client lost its transfer');
    assert.ok(isComplete(b, layer.digest, layer.size), `B completed: ${JSON.stringify(b)}`);
    assert.ok(isComplete(c, layer.digest, layer.size), `C completed: ${JSON.stringify(c)}`);
    // The store has the blob, whole and right; A's fill left nothing visible.
    const stored = await streamBlob(`${C.url}${path}`);
    assert.ok(isComplete(stored, layer.digest, layer.size));
    // One upstream GET by A (cut off), one by whoever took the lease over.
    assert.equal(blobGets(upstream.output(), 'team/big').get(layer.digest), 2);
    assert.match(B.output() + C.output(), /peer fill broke off; resuming from another source/);
  });

  test('peer requests need the token, and only read cache blobs', async () => {
    // appliances[0] died in the test before.
    const A = appliances[1]!;
    const blob = `/v2/team/app/blobs/sha256:${'0'.repeat(64)}?ns=${new URL(relay.url).host}`;
    const wrong = await fetch(`${A.url}${blob}`, { headers: { 'x-stevedore-peer-token': 'not-the-token-0123456789' } });
    assert.equal(wrong.status, 401);
    assert.match(wrong.headers.get('www-authenticate') ?? '', /^Basic realm=/, 'a 401 carries a challenge');
    assert.equal(((await wrong.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'UNAUTHORIZED');
    const put = await fetch(`${A.url}/v2/up/team/app/manifests/v9`, { method: 'PUT', headers: { 'x-stevedore-peer-token': PEER_TOKEN }, body: '{}' });
    assert.equal(put.status, 403);
    // A blob with no fill in progress there: 404, and no fill is started for a peer.
    const none = await fetch(`${appliances[2]!.url}${blob}`, { headers: { 'x-stevedore-peer-token': PEER_TOKEN } });
    assert.equal(none.status, 404);
    // A client cannot pretend to be a peer with the worker's header.
    const spoof = await fetch(`${appliances[2]!.url}/v2/up/team/app/blobs/sha256:${'1'.repeat(64)}`, { headers: { 'x-stevedore-peer-fill': '1' } });
    assert.equal(spoof.status, 404);
    assert.equal(blobGets(upstream.output(), 'team/app').get(`sha256:${'1'.repeat(64)}`), 1, 'treated as a client\'s request (asked upstream), not a peer\'s');
    assert.equal(blobGets(upstream.output(), 'team/app').get(`sha256:${'0'.repeat(64)}`), undefined);
  });

  test('a blob the upstream does not have, on an appliance whose store answers slowly: one upstream GET, a 404', async () => {
    // The upstream's 404 ends the fill (and takes it out of the worker's map) while the worker still
    // waits for the store: that must not make it take the lease again and ask the upstream again.
    const endpoint = new URL(storage.env.AWS_ENDPOINT_URL!);
    const slowStore = await startLatencyRelay(Number(endpoint.port), 150);
    const slow = await startPeerAppliance(storage, relay.url, { AWS_ENDPOINT_URL: slowStore.url });
    try {
      const missing = `sha256:${'2'.repeat(64)}`;
      const res = await fetch(`${slow.url}/v2/up/team/app/blobs/${missing}`, { signal: AbortSignal.timeout(30_000) });
      assert.equal(res.status, 404);
      assert.equal(((await res.json()) as { errors: Array<{ code: string }> }).errors[0]!.code, 'BLOB_UNKNOWN');
      assert.equal(blobGets(upstream.output(), 'team/app').get(missing), 1);
    } finally {
      // Killed, not stopped: a worker stuck in such a loop would hold a graceful stop up.
      await slow.kill();
      await slow.close();
      await slowStore.stop();
    }
  });
});
