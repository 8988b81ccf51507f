import { defaultStorageConfig } from '../lib/config.js';
import assert from 'node:assert/strict';
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../lib/log.js';
import { FilesystemDriver } from '../lib/storage/driver/filesystem.js';
import { RECHECK_MS } from '../lib/storage/manifest-reader.js';
import { readServedTimes } from '../lib/storage/served-index.js';
import { followAccessLog } from '../services/logger/src/main.js';
import { buildImage, type BuiltImage } from './helpers/oci-image.js';
import { eventually, sleep } from './helpers/wait.js';
import { startDistribution, startStevedoreRegistry, tempDir, type RunningProcess } from './helpers/processes.js';
import {
  blobPathOf, exists, hostOf, imageDigests, pullImage, pullLogLines, pushImage, runStevedore, setTimes, upstreamGets, writeLines,
} from './helpers/storage-fixtures.js';

/**
 * The storage-control loop end to end: real pulls through a cache worker fill the store past its
 * limit, the logger records which images were served again, and `stevedore clean` evicts the least
 * recently served cached content (never hosted content, never within the grace period), leaves no
 * cached manifest it cannot back, and evicted images pull again (refetched from the upstream).
 */

const MIN = 60_000;
const HOUR = 60 * MIN;
const IMAGES = 6;
const repoOf = (i: number) => `lru/img${i}`;

describe('cleaner end to end: LRU eviction of content filled by real pulls', () => {
  let upstream: RunningProcess & { root: string };
  let cache: RunningProcess;
  let hosted: RunningProcess;
  let root: string;
  let namespace: string;
  const images: BuiltImage[] = Array.from({ length: IMAGES }, (_, i) => buildImage({ layerSizes: [200 * 1024], seed: `lru-${i}` }));
  const hostedImage = buildImage({ layerSizes: [150 * 1024], seed: 'lru-hosted' });
  // Whole seconds: every time set and compared survives the filesystem's timestamp precision.
  const now = Math.floor(Date.now() / 1000) * 1000;
  const servedAt = new Date(now - 5 * MIN);

  const sizeOnDisk = async (digests: string[]): Promise<number> => {
    let total = 0;
    for (const d of digests) total += (await stat(blobPathOf(root, d))).size;
    return total;
  };
  /** Bytes under blobs/ that are not hosted content: what CLEANER_MAXSIZE bounds. */
  const cachedUsage = async (): Promise<number> => {
    const hostedDigests = new Set(imageDigests(hostedImage));
    let total = 0;
    for (const shard of await readdir(join(root, 'blobs', 'sha256'))) {
      for (const hex of await readdir(join(root, 'blobs', 'sha256', shard))) {
        if (!hostedDigests.has(`sha256:${hex}`)) total += (await stat(join(root, 'blobs', 'sha256', shard, hex))).size;
      }
    }
    return total;
  };
  const cleanEnv = (extra: Record<string, string>) => ({ STEVEDORE_ROOT: root, CLEANER_THRESHOLD_PERCENTAGE: '0', LOG_LEVEL: 'warn', ...extra });
  const allPresent = async (image: BuiltImage) => (await Promise.all(imageDigests(image).map((d) => exists(blobPathOf(root, d))))).every(Boolean);
  const nonePresent = async (image: BuiltImage) => !(await Promise.all(imageDigests(image).map((d) => exists(blobPathOf(root, d))))).some(Boolean);

  before(async () => {
    upstream = await startDistribution();
    for (let i = 0; i < IMAGES; i++) await pushImage(upstream.url, `${repoOf(i)}:v1`, images[i]!);
    root = await tempDir('storage-cleaner-root-');
    namespace = hostOf(upstream.url);
    [cache, hosted] = await Promise.all([
      startStevedoreRegistry(['--root', root, '--upstream', upstream.url]),
      startStevedoreRegistry(['--root', root]),
    ]);
  });

  after(async () => {
    await cache?.stop();
    await hosted?.stop();
    await upstream?.stop();
    if (root) await rm(root, { recursive: true, force: true });
  });

  it('fills the store: every image pulled through the cache, one pushed to the hosted worker on the same root', async () => {
    for (let i = 0; i < IMAGES; i++) {
      const pulled = await pullImage(cache.url, `${repoOf(i)}:v1`);
      assert.equal(pulled.manifest, images[i]!.manifest.digest);
    }
    await pushImage(hosted.url, 'team/hosted:v1', hostedImage);
    // A fill commits its blob just after the client has the last byte.
    for (const image of [...images, hostedImage]) assert.ok(await eventually(() => allPresent(image)));
    // Cached content is linked under cache/<upstream host>/, hosted content under repositories/.
    assert.deepEqual(await readdir(join(root, 'cache')), [namespace]);
    const tag = await readFile(join(root, 'cache', namespace, repoOf(0), '_manifests', 'tags', 'v1'), 'utf8');
    assert.equal(tag.trim(), images[0]!.manifest.digest);
    assert.ok(await exists(join(root, 'repositories', 'team', 'hosted', '_manifests', 'tags', 'v1')));

    // Stored long ago (never served since: the served index has no entry, so the write time counts),
    // oldest first (img0 the oldest); the hosted image older still.
    for (let i = 0; i < IMAGES; i++) for (const d of imageDigests(images[i]!)) await setTimes(root, d, now - 3 * HOUR + i * MIN);
    for (const d of imageDigests(hostedImage)) await setTimes(root, d, now - 10 * HOUR);
  });

  it('the logger records images served again (img0, img1) from access-log lines in the gateway\'s format', async () => {
    const logPath = join(root, 'logs', 'access.log');
    const lines = [
      ...pullLogLines(images[0]!, { upstream: namespace, repository: repoOf(0), tag: 'v1', time: servedAt }),
      'not json: a malformed line is skipped',
      ...pullLogLines(images[1]!, { upstream: namespace, repository: repoOf(1), tag: 'v1', time: servedAt }),
      // A failed request serves nothing.
      ...pullLogLines(images[2]!, { upstream: namespace, repository: repoOf(2), tag: 'v1', time: servedAt }).map((l) => l.replace('"status":200', '"status":404')),
    ];
    await writeLines(logPath, lines);
    const follower = await followAccessLog({ ...defaultStorageConfig(), root, accessLogPath: undefined, statePath: undefined, flushEvery: 60_000, logLevel: 'silent' }, createLogger('logger', 'silent'));
    await follower.stop();
    assert.equal(follower.malformed(), 1);
    assert.equal(follower.recorder.recorded, 6);
    assert.equal(follower.recorder.batches, 1);
    const served = await readServedTimes(new FilesystemDriver(root));
    for (const i of [0, 1]) for (const d of imageDigests(images[i]!)) assert.equal(served.get(d), servedAt.getTime());
    for (const i of [2, 3, 4, 5]) for (const d of imageDigests(images[i]!)) assert.equal(served.get(d), undefined);
    const state = JSON.parse(await readFile(join(root, 'logs', 'logger-state.json'), 'utf8')) as { offset: number };
    assert.equal(state.offset, (await stat(logPath)).size);
  });

  it('clean --dry-run prints what it would evict and why, and removes nothing', async () => {
    const limit = await sizeOnDisk([5, 0, 1].flatMap((i) => imageDigests(images[i]!)));
    const result = await runStevedore(['clean', '--dry-run'], cleanEnv({ CLEANER_MAXSIZE: String(limit), CLEANER_GRACE_TIME: '0s' }));
    assert.equal(result.code, 0, result.stderr);
    const wouldEvict = [...result.stdout.matchAll(/^would evict (sha256:[0-9a-f]{64}) .*\((cached, last served \d+ min ago)\)$/gm)].map((m) => m[1]);
    assert.deepEqual(wouldEvict.sort(), [2, 3, 4].flatMap((i) => imageDigests(images[i]!)).sort(), result.stdout);
    assert.match(result.stdout, /cached usage .* \(hosted .* not counted\), limit/);
    for (const image of [...images, hostedImage]) assert.ok(await allPresent(image), 'the dry run removed a blob');
    // Under the trigger (limit + threshold %), nothing is even considered.
    const relaxed = await runStevedore(['clean', '--dry-run'], cleanEnv({ CLEANER_MAXSIZE: String(limit), CLEANER_THRESHOLD_PERCENTAGE: '200', CLEANER_GRACE_TIME: '0s' }));
    assert.match(relaxed.stdout, /nothing to evict: usage is under the trigger/);
  });

  it('clean evicts the least recently served cached images down to the limit; hosted content stays; nothing dangles', async () => {
    const limit = await sizeOnDisk([5, 0, 1].flatMap((i) => imageDigests(images[i]!)));
    assert.ok(await cachedUsage() > limit);
    const result = await runStevedore(['clean'], cleanEnv({ CLEANER_MAXSIZE: String(limit), CLEANER_GRACE_TIME: '0s' }));
    assert.equal(result.code, 0, result.stderr);
    assert.equal([...result.stdout.matchAll(/^evict sha256:/gm)].length, 9, result.stdout);
    for (const i of [2, 3, 4]) assert.ok(await nonePresent(images[i]!), `img${i} should be evicted`);
    for (const i of [5, 0, 1]) assert.ok(await allPresent(images[i]!), `img${i} should be kept`);
    assert.ok(await allPresent(hostedImage), 'hosted content was evicted');
    assert.ok(await cachedUsage() <= limit);

    // No cached manifest the cache cannot back: every revision, tag and link names a stored blob.
    for (let i = 0; i < IMAGES; i++) {
      const repo = join(root, 'cache', namespace, repoOf(i));
      const revisions = await readdir(join(repo, '_manifests', 'revisions', 'sha256')).catch(() => [] as string[]);
      const links = await readdir(join(repo, '_layers', 'sha256')).catch(() => [] as string[]);
      const tags = await readdir(join(repo, '_manifests', 'tags')).catch(() => [] as string[]);
      for (const hex of [...revisions, ...links]) assert.ok(await exists(blobPathOf(root, `sha256:${hex}`)), `img${i}: dangling ${hex}`);
      for (const tag of tags) {
        const target = (await readFile(join(repo, '_manifests', 'tags', tag), 'utf8')).trim();
        assert.ok(revisions.includes(target.slice(7)), `img${i}: tag ${tag} names a manifest the cache no longer has`);
      }
      assert.equal(revisions.length, [2, 3, 4].includes(i) ? 0 : 1);
    }
  });

  it('never evicts content served within CLEANER_GRACE_TIME', async () => {
    // img5 was last served (stored) 3 h ago; img0 and img1 5 min ago (the served index).
    const result = await runStevedore(['clean'], cleanEnv({ CLEANER_MAXSIZE: '1', CLEANER_GRACE_TIME: '30m' }));
    assert.equal(result.code, 0, result.stderr);
    assert.ok(await nonePresent(images[5]!), `img5 should be evicted:\n${result.stdout}`);
    for (const i of [0, 1]) assert.ok(await allPresent(images[i]!), `img${i} is within the grace period`);
    assert.ok(await allPresent(hostedImage));
    const again = await runStevedore(['clean'], cleanEnv({ CLEANER_MAXSIZE: '1', CLEANER_GRACE_TIME: '30m' }));
    assert.match(again.stdout, /nothing evictable: .* within the grace period/);
  });

  it('evicted images pull again through the cache (refetched from the upstream); kept ones are served locally', async () => {
    // The worker trusts a tag it read from the store for RECHECK_MS, and the evictions above ran in
    // other processes: a pull within that second may still be answered from the worker's memory
    // (correct bytes) without putting the manifest back in the store, which this test checks.
    await sleep(RECHECK_MS + 100);
    const before = new Map([0, 1, 2, 3, 4, 5].map((i) => [i, upstreamGets(upstream.output(), repoOf(i))]));
    for (let i = 0; i < IMAGES; i++) {
      const pulled = await pullImage(cache.url, `${repoOf(i)}:v1`);
      assert.equal(pulled.manifest, images[i]!.manifest.digest);
      assert.deepEqual(pulled.blobs, [images[i]!.config.digest, ...images[i]!.layers.map((l) => l.digest)]);
    }
    for (let i = 0; i < IMAGES; i++) {
      const gets = upstreamGets(upstream.output(), repoOf(i));
      for (const blob of [images[i]!.config, ...images[i]!.layers]) {
        const added = (gets.get(blob.digest) ?? 0) - (before.get(i)!.get(blob.digest) ?? 0);
        assert.equal(added, [2, 3, 4, 5].includes(i) ? 1 : 0, `img${i} blob ${blob.digest}: ${added} new upstream GET(s)`);
      }
      if (!await eventually(() => allPresent(images[i]!))) {
        const kinds = new Map([[images[i]!.manifest.digest, 'manifest'], [images[i]!.config.digest, 'config'], ...images[i]!.layers.map((l, n) => [l.digest, `layer ${n}`] as [string, string])]);
        const missing = [];
        for (const d of imageDigests(images[i]!)) if (!await exists(blobPathOf(root, d))) missing.push(`${kinds.get(d) ?? '?'} ${d}`);
        assert.fail(`img${i} is not all back in the store 5 s after its pull; missing: ${missing.join(', ')}\n${cache.output().slice(-4000)}`);
      }
    }
    const pulled = await pullImage(hosted.url, 'team/hosted:v1');
    assert.equal(pulled.manifest, hostedImage.manifest.digest);
  });
});
