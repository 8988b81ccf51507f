import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { AppliancePlan } from '../lib/appliance.js';
import { createLogger } from '../lib/log.js';
import { parseDigest } from '../lib/oci/digest.js';
import { INVENTORY_SNAPSHOT_KEY, readInventorySnapshot } from '../lib/storage/inventory-snapshot.js';
import { compactServedIndex, readServedTimes, SERVED_BATCHES_PREFIX, SERVED_SNAPSHOT_KEY, ServedBatchWriter } from '../lib/storage/served-index.js';
import { StoreView } from '../services/gateway/src/console/store-view.js';
import { followAccessLog } from '../services/logger/src/main.js';
import { DriverStore } from './helpers/driver-store.js';
import { buildImage, type BuiltImage } from './helpers/oci-image.js';
import { imageDigests, imageSize, pullLogLines, runStevedore, sleep, writeLines } from './helpers/storage-fixtures.js';
import { STORAGE_KINDS, testStorage, type TestStorage } from './helpers/storage-targets.js';

/**
 * Storage control on both drivers (filesystem and S3 on Ceph RGW): the logger following a real
 * access log writes the served index (batches, no per-blob request), `stevedore clean` evicts the
 * least recently served cached content by it and never hosted content, `stevedore gc` marks and
 * sweeps over listings with the grace period and aborts an abandoned multipart upload, and the
 * --dry-run of both prints the plan and changes nothing. The store is written through the driver
 * in the workers' layout (the workers move onto the driver separately).
 */

const NS = 'registry.example:5000';
const log = createLogger('storage-control-test', 'silent');

for (const kind of STORAGE_KINDS) {
  describe(`storage control on ${kind}`, () => {
    let storage: TestStorage;
    let store: DriverStore;
    const cliEnv = (extra: Record<string, string>) => ({ STEVEDORE_ROOT: storage.root, LOG_LEVEL: 'warn', ...storage.env, ...extra });

    before(async () => {
      storage = await testStorage(kind);
      store = new DriverStore(storage.driver);
    });
    after(async () => { await storage?.cleanup(); });

    it('the served index: writers never overwrite each other, compaction folds batches, a concurrent compaction loses nothing', async () => {
      const a = 'sha256:' + 'a'.repeat(64);
      const b = 'sha256:' + 'b'.repeat(64);
      const one = new ServedBatchWriter(storage.driver, 'one');
      const two = new ServedBatchWriter(storage.driver, 'two');
      await Promise.all([one.write(new Map([[a, 1000]])), two.write(new Map([[a, 3000], [b, 2000]]))]);
      await one.write(new Map([[b, 500]]));
      assert.equal((await store.keys(SERVED_BATCHES_PREFIX)).length, 3);
      assert.deepEqual([...await readServedTimes(storage.driver)].sort(), [[a, 3000], [b, 2000]]);
      // Two compactions at once (two cleaners): both succeed in turn, every time survives.
      const [first, second] = await Promise.all([compactServedIndex(storage.driver), compactServedIndex(storage.driver)]);
      assert.ok(first.folded + second.folded >= 3);
      assert.deepEqual(await store.keys(SERVED_BATCHES_PREFIX), []);
      await one.write(new Map([[a, 4000]]));
      assert.deepEqual([...await readServedTimes(storage.driver)].sort(), [[a, 4000], [b, 2000]]);
      // Entries of blobs no longer stored are dropped when the cleaner says so.
      const result = await compactServedIndex(storage.driver, { isStored: (d) => d === a });
      assert.deepEqual({ folded: result.folded, entries: result.entries, dropped: result.dropped }, { folded: 1, entries: 1, dropped: 1 });
      assert.deepEqual([...await readServedTimes(storage.driver)], [[a, 4000]]);
      await storage.driver.delete(SERVED_SNAPSHOT_KEY);
    });

    describe('logger + cleaner: least recently served cached content goes first, hosted never', () => {
      const images: BuiltImage[] = Array.from({ length: 4 }, (_, i) => buildImage({ layerSizes: [40_000], seed: `${kind}-ctl-${i}` }));
      const hostedImage = buildImage({ layerSizes: [30_000], seed: `${kind}-ctl-hosted` });
      const repo = (i: number) => `lru/img${i}`;
      // Served order (oldest first): img1, img2, img3, img0.
      const order = [1, 2, 3, 0];
      const limit = imageSize(images[3]!) + imageSize(images[0]!);

      before(async () => {
        for (let i = 0; i < images.length; i++) await store.image(store.cache(NS), repo(i), 'v1', images[i]!);
        await store.image(store.hosted, 'team/hosted', 'v1', hostedImage);
        // Served after they were stored (a serve time before the write would count as the write time;
        // S3 keeps whole seconds), and before now (a later time counts as now).
        await sleep(1100);
        const base = Date.now();
        const lines = order.flatMap((i, rank) => pullLogLines(images[i]!, { upstream: NS, repository: repo(i), tag: 'v1', time: new Date(base + rank * 100) }));
        await writeLines(join(storage.root, 'logs', 'access.log'), lines);
        await sleep(500);
      });

      it('the logger writes what was served as one batch in the store (tags resolved through the store)', async () => {
        const follower = await followAccessLog({ ...storage.settings, root: storage.root, accessLogPath: undefined, statePath: undefined, flushEvery: 60_000, logLevel: 'silent' }, log);
        await follower.stop();
        assert.equal(follower.recorder.batches, 1);
        assert.equal(follower.recorder.recorded, images.reduce((n, img) => n + imageDigests(img).length, 0));
        const batches = await store.keys(SERVED_BATCHES_PREFIX);
        assert.equal(batches.length, 1);
        assert.ok(batches[0]!.startsWith(`${SERVED_BATCHES_PREFIX}${follower.recorder.instanceId}/`));
        const served = await readServedTimes(storage.driver);
        for (const [rank, i] of order.entries()) {
          for (const d of imageDigests(images[i]!)) assert.ok(served.get(d)! > 0, `${d} of img${i} not recorded`);
          if (rank > 0) assert.ok(served.get(images[i]!.manifest.digest)! > served.get(images[order[rank - 1]!]!.manifest.digest)!);
        }
        for (const d of imageDigests(hostedImage)) assert.equal(served.get(d), undefined);
      });

      it('clean --dry-run prints the plan in LRU order and removes nothing', async () => {
        const result = await runStevedore(['clean', '--dry-run'], cliEnv({ CLEANER_MAXSIZE: String(limit), CLEANER_THRESHOLD_PERCENTAGE: '0', CLEANER_GRACE_TIME: '0s' }));
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stdout, /cached usage .* \(hosted .* not counted\), limit/);
        const planned = [...result.stdout.matchAll(/^would evict (sha256:[0-9a-f]{64}) .*\(cached, last served \d+ min ago\)$/gm)].map((m) => m[1]!);
        assert.deepEqual(planned.slice(0, imageDigests(images[1]!).length).sort(), imageDigests(images[1]!).sort(), result.stdout);
        assert.deepEqual(planned.slice(imageDigests(images[1]!).length).sort(), imageDigests(images[2]!).sort(), result.stdout);
        for (const image of [...images, hostedImage]) for (const d of imageDigests(image)) assert.ok(await store.has(d), 'the dry run removed a blob');
        assert.equal((await store.keys(SERVED_BATCHES_PREFIX)).length, 1, 'the dry run compacted the served index');
      });

      it('clean evicts down to the limit, prunes the evicted images\' cache entries, folds the served index', async () => {
        const result = await runStevedore(['clean'], cliEnv({ CLEANER_MAXSIZE: String(limit), CLEANER_THRESHOLD_PERCENTAGE: '0', CLEANER_GRACE_TIME: '0s' }));
        assert.equal(result.code, 0, result.stderr);
        for (const i of [1, 2]) for (const d of imageDigests(images[i]!)) assert.equal(await store.has(d), false, `img${i} ${d} should be evicted`);
        for (const i of [3, 0]) for (const d of imageDigests(images[i]!)) assert.ok(await store.has(d), `img${i} should be kept`);
        for (const d of imageDigests(hostedImage)) assert.ok(await store.has(d), 'hosted content was evicted');
        // Nothing the cache cannot back: the evicted images' revisions, tags and links are gone.
        for (const i of [1, 2]) assert.deepEqual(await store.keys(store.cache(NS).repositoryPrefix(repo(i))), []);
        assert.equal((await store.keys(store.cache(NS).repositoryPrefix(repo(0)))).length, 4);
        // The batch is folded into the snapshot (and deleted); the plan's figures are kept for the console.
        assert.deepEqual(await store.keys(SERVED_BATCHES_PREFIX), []);
        assert.ok((await readServedTimes(storage.driver)).get(images[0]!.manifest.digest));
        const snapshot = await readInventorySnapshot(storage.driver);
        assert.ok(snapshot, `no ${INVENTORY_SNAPSHOT_KEY}`);
        assert.equal(snapshot.hosted, imageSize(hostedImage));
        // A second run has nothing to do.
        const again = await runStevedore(['clean', '--dry-run'], cliEnv({ CLEANER_MAXSIZE: String(limit), CLEANER_THRESHOLD_PERCENTAGE: '0', CLEANER_GRACE_TIME: '0s' }));
        assert.match(again.stdout, /nothing to evict: usage is under the trigger/);
      });

      it('the console\'s store view lists what is left through the driver', async () => {
        const plan: AppliancePlan = {
          hosted: { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(storage.root, 'none.sock') },
          proxies: [{ name: 'registry-cache', kind: 'proxy', upstream: NS, upstreamUrl: `https://${NS}/`, prefixes: [NS], socketPath: join(storage.root, 'none-cache.sock') }],
        };
        const view = new StoreView(storage.root, plan, storage.driver);
        assert.deepEqual((await view.repositories()).map((r) => `${r.source} ${r.name} ${r.tags}`), [`hosted team/hosted 1`, `${NS} lru/img0 1`, `${NS} lru/img3 1`]);
        assert.deepEqual(await view.tagNames(NS, repo(3)), ['v1']);
        assert.equal(await view.tagNames(NS, repo(1)), undefined, 'an evicted repository is gone');
      });

      it('never evicts content served within CLEANER_GRACE_TIME', async () => {
        const result = await runStevedore(['clean'], cliEnv({ CLEANER_MAXSIZE: '1', CLEANER_GRACE_TIME: '30m' }));
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stdout, /nothing evictable: .* within the grace period/);
        for (const i of [3, 0]) for (const d of imageDigests(images[i]!)) assert.ok(await store.has(d));
      });
    });

    describe('gc: mark and sweep over listings, grace period, abandoned writes', () => {
      const a = buildImage({ layerSizes: [20_000, 10_000], seed: `${kind}-gc-a` });
      const b = buildImage({ layerSizes: [15_000], seed: `${kind}-gc-b` });
      const cached = buildImage({ layerSizes: [12_000], seed: `${kind}-gc-cached` });
      const orphan = randomBytes(5000);
      const orphanDigest = parseDigest(`sha256:${createHash('sha256').update(orphan).digest('hex')}`);
      let unreferenced: string[];
      const SESSION = '0e4b1c6e-6f1a-4d55-9d0a-3c3f1f7f2a10';
      const sessions = async () => {
        const ids: string[] = [];
        for await (const session of storage.driver.uploads.list()) ids.push(session.id);
        return ids;
      };

      before(async () => {
        await store.image(store.hosted, 'gc/app', 'a', a);
        await store.image(store.hosted, 'gc/app', 'b', b);
        await store.image(store.cache(NS), 'gc/cached', 'v1', cached);
        await store.blob(orphan, orphanDigest.value);
        // Manifest a deleted (its revision and tag gone): its own blobs are unreferenced.
        await storage.driver.delete(store.hosted.manifestRevisionKey('gc/app', parseDigest(a.manifest.digest)));
        await storage.driver.delete(store.hosted.tagKey('gc/app', 'a'));
        unreferenced = [...imageDigests(a), orphanDigest.value];
        // An abandoned write (a process killed mid-upload): on S3 a multipart upload with one part.
        const writer = await storage.driver.blobWriter(store.hosted.blobKey(parseDigest(`sha256:${'c'.repeat(64)}`)));
        await writer.write(randomBytes(storage.settings.s3PartSize + 1024));
        // An upload session a client started and left.
        const session = await storage.driver.uploads.create(SESSION, { name: 'gc/app' });
        await storage.driver.uploads.append(session.id, 0, (async function* () { yield randomBytes(1000); })());
      });

      const incompleteWrites = async () => {
        let n = 0;
        for await (const _ of storage.driver.listIncompleteWrites()) n++;
        return n;
      };

      it('within the grace period nothing goes, not even the abandoned write', async () => {
        const dry = await runStevedore(['gc', '--dry-run'], cliEnv({ CLEANER_GRACE_TIME: '1h' }));
        assert.equal(dry.code, 0, dry.stderr);
        assert.match(dry.stdout, new RegExp(`would free 0 B in 0 blob\\(s\\); ${unreferenced.length} unreferenced blob\\(s\\) spared`));
        assert.match(dry.stdout, /would remove 0 idle upload session\(s\); would abort 0 incomplete write\(s\)/);
      });

      it('gc --dry-run lists exactly the unreferenced blobs and the abandoned write, and changes nothing', async () => {
        const dry = await runStevedore(['gc', '--dry-run'], cliEnv({ CLEANER_GRACE_TIME: '0s' }));
        assert.equal(dry.code, 0, dry.stderr);
        const listed = [...dry.stdout.matchAll(/^would remove (sha256:[0-9a-f]{64}) .*\(unreferenced\)$/gm)].map((m) => m[1]!);
        assert.deepEqual(listed.sort(), [...unreferenced].sort(), dry.stdout);
        assert.match(dry.stdout, /would abort 1 incomplete write\(s\)/);
        for (const d of unreferenced) assert.ok(await store.has(d), 'the dry run removed a blob');
        assert.equal(await incompleteWrites(), 1);
      });

      it('gc removes them (and the hosted links to them), the idle session, aborts the abandoned write; referenced and cached content stays', async () => {
        assert.deepEqual(await sessions(), [SESSION]);
        await sleep(1100);
        const gc = await runStevedore(['gc'], cliEnv({ CLEANER_GRACE_TIME: '0s', STEVEDORE_UPLOAD_TTL: '1s' }));
        assert.equal(gc.code, 0, gc.stderr);
        assert.match(gc.stdout, /removed 1 idle upload session\(s\); aborted 1 incomplete write\(s\)/);
        assert.deepEqual(await sessions(), []);
        for (const d of unreferenced) assert.equal(await store.has(d), false, `${d} should be removed`);
        for (const d of [...imageDigests(b), ...imageDigests(cached)]) assert.ok(await store.has(d), `${d} was removed`);
        assert.equal(await incompleteWrites(), 0);
        const links = (await store.keys(`${store.hosted.repositoryPrefix('gc/app')}_layers/`)).map((k) => `sha256:${k.split('/').pop()}`);
        assert.deepEqual(links.sort(), [b.config.digest, ...b.layers.map((l) => l.digest)].sort());
        const again = await runStevedore(['gc'], cliEnv({ CLEANER_GRACE_TIME: '0s' }));
        assert.match(again.stdout, /freed 0 B in 0 blob\(s\)/);
      });
    });
  });
}
