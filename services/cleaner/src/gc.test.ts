import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, stat, unlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, it } from 'node:test';
import { createLogger } from '../../../lib/log.js';
import type { Digest } from '../../../lib/oci/digest.js';
import { SyntheticStore, type StoredBlob } from '../../../test/helpers/synthetic-store.js';
import { collectGarbage } from './gc.js';

const log = createLogger('gc-test', 'silent');
const NS = 'registry.example:5000';
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

describe('garbage collection: mark-and-sweep of the blob store', () => {
  const roots: string[] = [];
  let store: SyntheticStore;
  let now: number;
  let old: { atimeMs: number };

  beforeEach(async () => {
    const root = await mkdtemp(join(tmpdir(), 'gc-test-'));
    roots.push(root);
    store = new SyntheticStore(root);
    now = Math.floor(Date.now() / 1000) * 1000; // whole seconds survive any timestamp precision
    old = { atimeMs: now - 3 * HOUR };
  });

  after(async () => {
    for (const root of roots) await rm(root, { recursive: true, force: true });
  });

  const present = async (b: StoredBlob | Digest): Promise<boolean> =>
    stat(store.hosted.blobPath('digest' in b ? b.digest : b)).then(() => true, () => false);
  const digests = (list: Array<{ digest: Digest }>): string[] => list.map((b) => b.digest.value).sort();
  const deleteManifest = (repo: string, manifest: StoredBlob) => unlink(store.hosted.manifestRevisionPath(repo, manifest.digest));

  it('removes what no manifest references (a deleted manifest\'s own layers), keeps shared, cached and referenced blobs', async () => {
    const shared = await store.blob(5000, old);
    const a = await store.image(store.hosted, 'team/app', [4000], { tag: 'a', times: old, shared: [shared] });
    const b = await store.image(store.hosted, 'team/app', [3000], { tag: 'b', times: old, shared: [shared] });
    const cached = await store.image(store.cache(NS), 'library/x', [2000], { times: old });
    const orphan = await store.blob(1000, old);
    await deleteManifest('team/app', a.manifest);

    const dry = await collectGarbage(store.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: true, log, now });
    const expected = digests([a.manifest, a.config, a.layers[1]!, orphan]);
    assert.deepEqual(digests(dry.removed), expected);
    for (const blob of [...a.all, orphan]) assert.equal(await present(blob), true, 'dry run removed something');

    const result = await collectGarbage(store.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: false, log, now });
    assert.deepEqual(digests(result.removed), expected);
    assert.equal(result.removedBytes, [a.manifest, a.config, a.layers[1]!, orphan].reduce((s, x) => s + x.size, 0));
    for (const blob of [a.manifest, a.config, a.layers[1]!, orphan]) assert.equal(await present(blob), false);
    for (const blob of [shared, ...b.all, ...cached.all]) assert.equal(await present(blob), true);
    // The links of swept blobs are gone; the shared layer's link stays.
    const links = await readdir(store.hosted.layerLinksDir('team/app', 'sha256'));
    assert.deepEqual(links.sort(), [shared.digest.hex, b.config.digest.hex, b.layers[1]!.digest.hex].sort());
    // A second run has nothing left to do.
    assert.deepEqual((await collectGarbage(store.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: false, log, now })).removed, []);
  });

  it('spares unreferenced blobs written or served within the grace period', async () => {
    const fresh = await store.blob(1000);
    const served = await store.blob(1000, { atimeMs: now - 60_000, mtimeMs: now - 3 * HOUR });
    const stale = await store.blob(1000, old);
    const result = await collectGarbage(store.driver, { graceMs: HOUR, uploadTtlMs: DAY, dryRun: false, log, now });
    assert.deepEqual(digests(result.removed), digests([stale]));
    assert.equal(result.spared, 2);
    assert.equal(await present(fresh), true);
    assert.equal(await present(served), true);
  });

  it('an index and its child manifests are all kept, cached indexes too', async () => {
    for (const layout of [store.hosted, store.cache(NS)]) {
      const img = await store.image(layout, 'team/multi', [1000], { times: old });
      const index = await store.blob(Buffer.from(JSON.stringify({
        schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json',
        manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: img.manifest.digest.value, size: img.manifest.size }],
      })), old);
      await mkdir(join(layout.manifestsDir('team/multi'), 'revisions', 'sha256'), { recursive: true });
      await writeFile(layout.manifestRevisionPath('team/multi', index.digest), 'application/vnd.oci.image.index.v1+json');
      const result = await collectGarbage(store.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: false, log, now });
      assert.deepEqual(result.removed, []);
      for (const blob of [index, ...img.all]) assert.equal(await present(blob), true);
    }
  });

  it('removes upload sessions idle past the upload TTL, keeps active ones', async () => {
    const stale = join(store.root, '_uploads', '11111111-1111-4111-8111-111111111111');
    const active = join(store.root, '_uploads', '22222222-2222-4222-8222-222222222222');
    for (const dir of [stale, active]) {
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'data'), 'partial');
    }
    await utimes(stale, new Date(now - 2 * DAY), new Date(now - 2 * DAY));
    const dry = await collectGarbage(store.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: true, log, now });
    assert.equal(dry.staleUploads, 1, 'the dry run counts what it would remove');
    assert.equal((await readdir(join(store.root, '_uploads'))).length, 2, 'the dry run removed a session');
    const result = await collectGarbage(store.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: false, log, now });
    assert.equal(result.staleUploads, 1);
    assert.deepEqual(await readdir(join(store.root, '_uploads')), ['22222222-2222-4222-8222-222222222222']);
  });

  it('a push racing with the run loses nothing: an old blob linked again, and a manifest pushed between mark and sweep', async () => {
    // Two deleted images whose blobs are old and unreferenced ...
    const a = await store.image(store.hosted, 'team/app', [4000], { tag: 'a', times: old });
    const b = await store.image(store.hosted, 'team/app', [4000], { tag: 'b', times: old });
    await deleteManifest('team/app', a.manifest);
    await deleteManifest('team/app', b.manifest);
    // ... a's layer pushed again to another repository before the run (its upload found it stored: a fresh link) ...
    await store.link(store.hosted, 'team/other', a.layers[0]!.digest);
    let pushed: StoredBlob | undefined;
    const result = await collectGarbage(store.driver, {
      graceMs: HOUR, uploadTtlMs: DAY, dryRun: false, log,
      // ... and while the run walks the store, a manifest reusing b's (still linked) config and layer is pushed.
      beforeSweep: async () => {
        const extra = await store.blob(2000);
        pushed = await store.manifest(store.hosted, 'team/app', b.config, [...b.layers, extra], { tag: 'c' });
      },
    });
    assert.ok(pushed);
    for (const blob of [a.layers[0]!, b.config, b.layers[0]!, pushed]) assert.equal(await present(blob), true, 'a pushed blob was swept');
    assert.deepEqual(digests(result.removed), digests([a.manifest, a.config, b.manifest]));
    // Once the grace period is over, a's layer (linked, but used by no manifest) goes like any other.
    const later = await collectGarbage(store.driver, { graceMs: HOUR, uploadTtlMs: DAY, dryRun: false, log, now: now + 2 * HOUR });
    assert.deepEqual(digests(later.removed), digests([a.layers[0]!]));
  });
});
