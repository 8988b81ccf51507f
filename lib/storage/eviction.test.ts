import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { createLogger } from '../log.js';
import type { Digest } from '../oci/digest.js';
import { SyntheticStore, type StoredBlob } from '../../test/helpers/synthetic-store.js';
import { FilesystemDriver } from './driver/filesystem.js';
import { applyEviction, planEviction, pruneDanglingCacheEntries } from './eviction.js';

const log = createLogger('cleaner-test', 'silent');
const NS = 'registry.example:5000';
const HOUR = 3_600_000;
const MIN = 60_000;

describe('cleaner: size-bounded LRU eviction of cached content', () => {
  const roots: string[] = [];
  let store: SyntheticStore;
  let now: number;

  beforeEach(async () => {
    const root = await mkdtemp(join(tmpdir(), 'evict-test-'));
    roots.push(root);
    store = new SyntheticStore(root);
    now = Math.floor(Date.now() / 1000) * 1000; // whole seconds survive any timestamp precision
  });

  after(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });

  const present = async (b: StoredBlob | Digest): Promise<boolean> =>
    stat(store.hosted.blobPath('digest' in b ? b.digest : b)).then(() => true, () => false);
  const digests = (list: Array<{ digest: Digest }>): string[] => list.map((b) => b.digest.value).sort();

  it('does nothing while cached usage is under the trigger (limit + threshold)', async () => {
    const cache = store.cache(NS);
    await store.image(cache, 'library/a', [10_000], { times: { atimeMs: now - 5 * HOUR } });
    const usage = (await planEviction(store.driver, { maxSize: 1, thresholdPercentage: 0, graceMs: 0, now })).usage;
    // 20 % threshold: a limit of usage/1.1 is exceeded by 10 %, not enough to trigger.
    const plan = await planEviction(store.driver, { maxSize: Math.ceil(usage / 1.1), thresholdPercentage: 20, graceMs: 0, now });
    assert.equal(plan.usage, usage);
    assert.ok(plan.trigger >= usage);
    assert.deepEqual(plan.evict, []);
    // 5 %: triggered, and eviction goes down to the limit, not just under the trigger.
    const triggered = await planEviction(store.driver, { maxSize: Math.ceil(usage / 1.1), thresholdPercentage: 5, graceMs: 0, now });
    assert.ok(triggered.evict.length > 0);
    assert.ok(triggered.usage - triggered.evict.reduce((s, b) => s + b.size, 0) <= triggered.limit);
  });

  it('evicts least recently served first, down to the limit, never hosted content (which is not counted)', async () => {
    const cache = store.cache(NS);
    // Five cached images, served 5, 4, 3, 2, 1 hours ago; a hosted image older than all of them.
    const images = [];
    for (let i = 0; i < 5; i++) images.push(await store.image(cache, `library/img${i}`, [20_000], { tag: 'v1', times: { atimeMs: now - (5 - i) * HOUR } }));
    const hostedImage = await store.image(store.hosted, 'team/app', [30_000], { tag: 'v1', times: { atimeMs: now - 50 * HOUR } });
    const size = (img: { all: StoredBlob[] }) => img.all.reduce((s, b) => s + b.size, 0);
    const hostedBytes = size(hostedImage);
    const keep = size(images[2]!) + size(images[3]!) + size(images[4]!);

    const plan = await planEviction(store.driver, { maxSize: keep, thresholdPercentage: 0, graceMs: 0, now });
    assert.equal(plan.hosted, hostedBytes);
    assert.equal(plan.usage, images.reduce((s, img) => s + size(img), 0));
    assert.deepEqual(digests(plan.evict), digests([...images[0]!.all, ...images[1]!.all]));
    // Oldest first.
    for (let i = 1; i < plan.evict.length; i++) assert.ok(plan.evict[i - 1]!.lastServedMs <= plan.evict[i]!.lastServedMs);
    assert.match(plan.evict[0]!.reason, /last served 300 min ago/);

    await applyEviction(store.driver, plan, log);
    for (const b of [...images[0]!.all, ...images[1]!.all]) assert.equal(await present(b), false);
    for (const b of [...images[2]!.all, ...images[3]!.all, ...images[4]!.all, ...hostedImage.all]) assert.equal(await present(b), true);
    const after = await planEviction(store.driver, { maxSize: keep, thresholdPercentage: 0, graceMs: 0, now });
    assert.equal(after.usage, keep);
    assert.deepEqual(after.evict, []);
  });

  it('a blob both hosted and cached is hosted: never evicted', async () => {
    const cache = store.cache(NS);
    const shared = await store.blob(50_000, { atimeMs: now - 10 * HOUR });
    await store.image(cache, 'library/base', [], { shared: [shared], times: { atimeMs: now - 10 * HOUR } });
    await store.image(store.hosted, 'team/derived', [1000], { shared: [shared], times: { atimeMs: now - 10 * HOUR } });
    const plan = await planEviction(store.driver, { maxSize: 1, thresholdPercentage: 0, graceMs: 0, now });
    assert.ok(!digests(plan.evict).includes(shared.digest.value));
    await applyEviction(store.driver, plan, log);
    assert.equal(await present(shared), true);
  });

  it('never evicts content written or served within the grace period', async () => {
    const cache = store.cache(NS);
    const old = await store.image(cache, 'library/old', [10_000], { times: { atimeMs: now - 3 * HOUR } });
    const served = await store.image(cache, 'library/served', [10_000], { times: { atimeMs: now - 10 * MIN, mtimeMs: now - 30 * HOUR } });
    const written = await store.image(cache, 'library/written', [10_000], { times: { atimeMs: now - 30 * HOUR, mtimeMs: now - 5 * MIN } });
    const plan = await planEviction(store.driver, { maxSize: 1, thresholdPercentage: 0, graceMs: HOUR, now });
    assert.deepEqual(digests(plan.evict), digests(old.all));
    assert.equal(plan.pinned, [...served.all, ...written.all].reduce((s, b) => s + b.size, 0));
    await applyEviction(store.driver, plan, log);
    for (const b of [...served.all, ...written.all]) assert.equal(await present(b), true);
  });

  it('prunes what a cache can no longer back: revisions, tags and links of evicted blobs (and only those)', async () => {
    const cache = store.cache(NS);
    const gone = await store.image(cache, 'library/gone', [10_000], { tag: 'v1', times: { atimeMs: now - 9 * HOUR } });
    const layerOnly = await store.image(cache, 'library/partial', [10_000], { tag: 'v1', times: { atimeMs: now - 8 * HOUR } });
    // The layer of "partial" is old, its manifest and config served recently: only the layer goes.
    for (const b of [layerOnly.manifest, layerOnly.config]) await store.setTimes(b.digest, now - HOUR);
    const kept = await store.image(cache, 'library/kept', [10_000], { tag: 'v1', times: { atimeMs: now - MIN } });
    const keptBytes = [...kept.all, layerOnly.manifest, layerOnly.config].reduce((s, b) => s + b.size, 0);
    const plan = await planEviction(store.driver, { maxSize: keptBytes, thresholdPercentage: 0, graceMs: 0, now });
    assert.deepEqual(digests(plan.evict), digests([...gone.all, layerOnly.layers[0]!]));
    await applyEviction(store.driver, plan, log);

    // Emptied directories are pruned by the driver (on S3 there are none): missing = empty.
    const list = (dir: string) => readdir(dir).catch(() => [] as string[]);
    assert.deepEqual(await list(cache.tagsDir('library/gone')), []);
    assert.deepEqual(await list(cache.manifestRevisionsDir('library/gone', 'sha256')), []);
    assert.deepEqual(await list(cache.layerLinksDir('library/gone', 'sha256')), []);
    // partial: manifest still backed (its revision and tag stay), the evicted layer's link is gone.
    assert.deepEqual(await list(cache.tagsDir('library/partial')), ['v1']);
    assert.deepEqual(await list(cache.manifestRevisionsDir('library/partial', 'sha256')), [layerOnly.manifest.digest.hex]);
    assert.deepEqual(await list(cache.layerLinksDir('library/partial', 'sha256')), [layerOnly.config.digest.hex]);
    assert.deepEqual(await list(cache.tagsDir('library/kept')), ['v1']);
    assert.equal((await list(cache.layerLinksDir('library/kept', 'sha256'))).length, 2);
    // Nothing dangling is left: a second prune finds nothing.
    assert.equal(await pruneDanglingCacheEntries(store.driver), 0);
  });

  it('re-checks before removing: content that became hosted or was served since the plan stays', async () => {
    const cache = store.cache(NS);
    const a = await store.image(cache, 'library/a', [10_000], { times: { atimeMs: now - 5 * HOUR } });
    const b = await store.image(cache, 'library/b', [10_000], { times: { atimeMs: now - 4 * HOUR } });
    const c = await store.image(cache, 'library/c', [10_000], { times: { atimeMs: now - 3 * HOUR } });
    const plan = await planEviction(store.driver, { maxSize: 1, thresholdPercentage: 0, graceMs: 0, now });
    assert.equal(plan.evict.length, 9);
    // Meanwhile: a hosted push finds a's layer stored and links it; b's layer is served (the logger records it).
    await store.link(store.hosted, 'team/app', a.layers[0]!.digest);
    await store.setTimes(b.layers[0]!.digest, now - MIN, now - 4 * HOUR);
    await applyEviction(store.driver, plan, log);
    assert.equal(await present(a.layers[0]!), true);
    assert.equal(await present(b.layers[0]!), true);
    for (const blob of [a.manifest, a.config, b.manifest, b.config, ...c.all]) assert.equal(await present(blob), false);
  });

  it('an empty or missing store plans nothing', async () => {
    const plan = await planEviction(new FilesystemDriver(join(store.root, 'nothing-here')), { maxSize: 1, thresholdPercentage: 0, graceMs: 0, now });
    assert.deepEqual(plan, { usage: 0, limit: 1, trigger: 1, evict: [], pinned: 0, hosted: 0, blobCount: 0, stored: new Set() });
  });
});
