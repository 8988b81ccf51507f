import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { isComplete, looksComplete, sleep, startThrottledRelay, streamBlob, type BlobTransfer } from './helpers/faults.js';
import { buildImage, type Blob } from './helpers/oci-image.js';
import { startDistribution, type RunningProcess } from './helpers/processes.js';
import { blobKey, corruptStoredBlobs, pull, seed, startCacheOn } from './helpers/proxy-fixtures.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Fault: the cache worker is killed with SIGKILL while several clients are pulling large blobs it is
 * still filling from a real upstream (docker-registry behind a 16 MB/s link per connection). No
 * client may take a broken transfer for a complete one; after a restart on the same store, every
 * blob a client had received whole is served again with the same bytes, and the store never holds
 * a key whose content does not hash to its name. On each storage driver: an interrupted fill leaves
 * at most an incomplete write of a blob it was filling (a temp file; on S3 a multipart upload to the
 * blob's key), which the driver lists for GC and which never shows as the blob.
 */

const MiB = 1024 * 1024;
const cleanup: Array<() => Promise<unknown>> = [];

for (const kind of STORAGE_KINDS) {
  describe(`fault on ${kind}: SIGKILL of the cache worker during concurrent cold fills`, () => {
    let upstream: RunningProcess & { root: string };
    let storage: TestStorage;
    let relayUrl: string;
    // Random bytes barely compress: the gzip layers are about these sizes.
    const image = buildImage({ layerSizes: [8 * MiB, 12 * MiB, 16 * MiB, 20 * MiB], seed: `fault-kill-fills-${kind}` });
    const [a, b, c, d] = image.layers as [Blob, Blob, Blob, Blob];
    const blobUrl = (base: string, blob: Blob) => `${base}/v2/team/big/blobs/${blob.digest}`;

    before(async () => {
      upstream = await startDistribution();
      cleanup.push(() => upstream.stop());
      await seed(upstream.url, 'team/big:v1', [image]);
      const relay = await startThrottledRelay(upstream.port, 16_000_000);
      cleanup.push(() => relay.stop());
      relayUrl = relay.url;
      storage = await testStorage(kind);
      cleanup.push(() => storage.cleanup());
    });
    after(async () => {
      for (const fn of cleanup.splice(0).reverse()) await fn().catch(() => {});
    });

    it('broken transfers are never complete-looking; acknowledged blobs re-verify after the restart; no partial blob in the store', async (t) => {
      const cache = await startCacheOn(storage, relayUrl);
      cleanup.push(() => cache.stop());

      // Four clients, each pulling its blobs one after the other; a and b, c are shared (joined fills).
      const plans: Blob[][] = [[a, b], [a, c], [d], [b, c]];
      const results: Array<{ client: number; blob: Blob; transfer: BlobTransfer }> = [];
      let aDone = 0;
      let signalADone!: () => void;
      const bothHaveA = new Promise<void>((resolve) => { signalADone = resolve; });
      const started = Date.now();
      const clients = plans.map(async (plan, client) => {
        for (const blob of plan) {
          const transfer = await streamBlob(blobUrl(cache.url, blob));
          results.push({ client, blob, transfer });
          if (blob === a && isComplete(transfer, a.digest, a.size) && ++aDone === 2) signalADone();
          if (!transfer.ended) break; // the worker is gone: this client stops, as a puller would
        }
      });
      // Kill once two clients have a (8 MiB, ~0.5 s at 16 MB/s) whole, while d (20 MiB, ~1.3 s) is still streaming.
      await Promise.race([bothHaveA, sleep(20_000)]);
      assert.equal(aDone, 2, 'both clients received blob a whole before the kill');
      const killedAt = Date.now() - started;
      cache.proc.kill('SIGKILL');
      await Promise.all(clients);

      const summary = results.map(({ client, blob, transfer }) =>
        `client ${client} ${blob.digest.slice(7, 19)} (${blob.size} B): ${transfer.status} ${transfer.received} B${transfer.ended ? '' : ` broken: ${transfer.error}`}`);
      t.diagnostic(`killed ${killedAt} ms after the pulls began; transfers:\n${summary.join('\n')}`);
      // Nothing that reached a client as a whole 200 may have the wrong bytes.
      for (const r of results) {
        if (looksComplete(r.transfer)) assert.equal(r.transfer.digest, r.blob.digest, `client ${r.client} got a complete-looking 200 with wrong bytes`);
      }
      const acknowledged = results.filter((r) => isComplete(r.transfer, r.blob.digest, r.blob.size));
      const broken = results.filter((r) => !r.transfer.ended);
      assert.ok(broken.some((r) => r.blob === d), 'the 20 MiB blob was still streaming when the worker died (the kill hit mid-fill)');

      // Before the restart: whatever the store holds is whole.
      const atKill = await corruptStoredBlobs(storage);
      assert.deepEqual(atKill.corrupt, [], 'no partial or corrupt blob visible after the kill');
      // What the killed fills left is at most one incomplete write per blob, never visible as a blob.
      const incomplete = [];
      for await (const write of storage.driver.listIncompleteWrites()) incomplete.push(write);
      assert.ok(incomplete.length <= image.layers.length, `incomplete writes: ${JSON.stringify(incomplete)}`);
      const layerKeys = image.layers.map((l) => blobKey(l.digest));
      for (const write of incomplete) if (write.key !== undefined) assert.ok(layerKeys.includes(write.key), `incomplete write of ${write.key}`);

      const restarted = await startCacheOn(storage, relayUrl);
      cleanup.push(() => restarted.stop());
      // Every acknowledged pull re-verifies; then every blob (cached or fetched again) is served whole.
      for (const r of acknowledged) {
        const again = await streamBlob(blobUrl(restarted.url, r.blob));
        assert.ok(isComplete(again, r.blob.digest, r.blob.size), `acknowledged blob ${r.blob.digest} re-verified: ${JSON.stringify(again)}`);
      }
      const afterRestart = await Promise.all(image.layers.map((blob) => streamBlob(blobUrl(restarted.url, blob))));
      afterRestart.forEach((transfer, i) => assert.ok(isComplete(transfer, image.layers[i]!.digest, image.layers[i]!.size), `blob ${i} after the restart: ${JSON.stringify(transfer)}`));
      const pulled = await pull(restarted.url, 'team/big:v1', { timeoutMs: 60_000 });
      assert.deepEqual(pulled.manifests, [{ digest: image.manifest.digest, config: image.config.digest, layers: image.layers.map((l) => l.digest) }]);

      const final = await corruptStoredBlobs(storage);
      assert.deepEqual(final.corrupt, []);
      t.diagnostic(`acknowledged before the kill: ${acknowledged.length}, broken: ${broken.length}; blobs checked at kill: ${atKill.checked}, after: ${final.checked}; incomplete writes left by the kill: ${incomplete.length}`);
    });
  });
}
