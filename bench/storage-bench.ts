/**
 * Storage-control benchmark: how long the cleaner takes to scan a large store and evict from it,
 * how long garbage collection takes on the same store, and how many access-log lines per second
 * the logger turns into served-index batches. On the filesystem or on S3 (Ceph RGW).
 *
 *   npm run bench:storage
 *   BENCH_BLOBS=20000 BENCH_LINES=100000 npm run bench:storage     # quick run
 *   node dist/bench/storage-bench.js --storage s3 --blobs 100000    # on a Ceph RGW started for the run
 *   node dist/bench/storage-bench.js --blobs 100000 --json out.json
 *
 * Options (flag, else environment variable):
 *   --storage / BENCH_STORAGE      filesystem (a temp dir) or s3 (a fresh prefix on Ceph RGW: the test
 *                                  runner's if STEVEDORE_TEST_RGW_DIR is set, else one started for the run)
 *   --blobs / BENCH_BLOBS          blobs in the store, default 100000: half cached (linked under
 *                                  cache/<host>/<repo>/_layers, one manifest per 10 layers), a quarter
 *                                  hosted (likewise under repositories/), a quarter unreferenced
 *   --blob-size / BENCH_BLOB_SIZE  bytes per layer blob, default 512
 *   --lines / BENCH_LINES          access-log lines for the logger run, default 500000
 *   --distinct / BENCH_DISTINCT    distinct blobs and manifests those lines name, default 1000
 *   --json / BENCH_JSON            also write the results as JSON to this file
 *   --keep / BENCH_KEEP            keep the temp store (prints its path)
 *
 * The store is written through the storage driver; last-served times go into the served index as
 * the logger writes them (one batch), spread so the cleaner has a real LRU order to sort. (They lie
 * just after the build: a time before a blob's own write would count as the write's time.)
 *
 * Measured 2026-12-03 (2 shared CPUs under heavy load from other jobs, Ceph RGW from scripts/ceph-rgw.sh),
 * --storage s3 --blobs 100000: cleaner scan (plan) 14.1 s, re-scan 7.5 s (target < 30 s); eviction of
 * 15,012 blobs + pruning 324 s (one DELETE per key; 2026-12-04 on a quiet machine, with deletes
 * batched by DeleteObjects: 41.6 s, scan 4.0 s); GC dry run 15.9 s, real run 94 s (20,025 removed;
 * 2026-12-04: 48.5 s with one DELETE per key, 40.2 s with DeleteObjects);
 * the store build (~170,000 PUTs) 33 min. `stevedore clean --dry-run` on that store: 11.4 s end to end.
 * Logger on S3 (--blobs 2400 --lines 100000): 139,766 lines/s, 1 batch (one PUT) per flush.
 */
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { mkdir, stat, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { ACCESS_LOG_MESSAGE } from '../lib/access-log.js';
import { createLogger } from '../lib/log.js';
import { digestOf, type Digest } from '../lib/oci/digest.js';
import { StorageLayout } from '../lib/storage/layout.js';
import { applyEviction, planEviction } from '../lib/storage/eviction.js';
import { collectGarbage } from '../services/cleaner/src/gc.js';
import { followAccessLog } from '../services/logger/src/main.js';
import type { StorageDriver } from '../lib/storage/driver/driver.js';
import { ServedBatchWriter } from '../lib/storage/served-index.js';
import { testStorage, type StorageKind, type TestStorage } from '../test/helpers/storage-targets.js';
import { numberOption, option } from './options.js';



const BLOBS = numberOption('blobs', 'BENCH_BLOBS', 100_000, { min: 100, integer: true });
const BLOB_SIZE = numberOption('blob-size', 'BENCH_BLOB_SIZE', 512, { min: 1, integer: true });
const LINES = numberOption('lines', 'BENCH_LINES', 500_000, { min: 1, integer: true });
const DISTINCT = numberOption('distinct', 'BENCH_DISTINCT', 1_000, { min: 1, integer: true });
const JSON_PATH = option('json', 'BENCH_JSON', '');
const KEEP = option('keep', 'BENCH_KEEP', '') === 'true';
const STORAGE = option('storage', 'BENCH_STORAGE', 'filesystem') as StorageKind;
if (STORAGE !== 'filesystem' && STORAGE !== 's3') throw new Error(`--storage must be filesystem or s3, got ${STORAGE}`);

const NAMESPACE = 'registry.example.com';
const LAYERS_PER_MANIFEST = 10;
const REPOS = 500;
const DAY = 86_400_000;
const log = createLogger('bench', 'silent');

const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const rate = (n: number, ms: number) => Math.round(n / (ms / 1000));

/** Runs `task` over `items` with `width` in flight (file creation is I/O-bound; a little concurrency helps). */
async function pool<T>(items: T[], width: number, task: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < items.length) {
      const i = next++;
      await task(items[i]!, i);
    }
  }));
}

interface Built {
  root: string;
  storage: TestStorage;
  driver: StorageDriver;
  cachedDigests: Digest[];
  manifestTags: Array<{ repo: string; tag: string; digest: Digest }>;
  bytes: { cached: number; hosted: number; orphan: number };
}

/** The store: BLOBS blobs in total, manifests included. */
async function buildStore(): Promise<Built> {
  const storage = await testStorage(STORAGE);
  const { root, driver } = storage;
  const hosted = new StorageLayout(root);
  const cache = new StorageLayout(root, { namespace: NAMESPACE });
  const perGroup = LAYERS_PER_MANIFEST + 2; // layers, config, manifest
  const cachedBlobs = Math.floor(BLOBS / 2);
  const hostedBlobs = Math.floor(BLOBS / 4);
  const cachedImages = Math.floor(cachedBlobs / perGroup);
  const hostedImages = Math.floor(hostedBlobs / perGroup);
  const orphans = BLOBS - (cachedImages + hostedImages) * perGroup;
  const result: Built = { root, storage, driver, cachedDigests: [], manifestTags: [], bytes: { cached: 0, hosted: 0, orphan: 0 } };
  /** Digest → its rank in the LRU order (0 = least recently served), turned into times after the build. */
  const rank = new Map<string, number>();

  const storeBlob = async (data: Buffer, order: number): Promise<Digest> => {
    const digest = digestOf(data);
    await driver.putContent(hosted.blobKey(digest), data);
    rank.set(digest.value, order);
    return digest;
  };

  const image = async (layout: StorageLayout, kind: 'cached' | 'hosted', index: number): Promise<void> => {
    const repo = `bench/repo${index % REPOS}`;
    // An image's blobs served together, layers a little apart.
    const order = Math.random();
    const layers: Array<{ digest: Digest; size: number }> = [];
    for (let l = 0; l < LAYERS_PER_MANIFEST; l++) {
      const data = randomBytes(BLOB_SIZE);
      layers.push({ digest: await storeBlob(data, order - l * 1e-9), size: data.length });
    }
    const configData = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n: `${kind}-${index}` }));
    const config = await storeBlob(configData, order);
    const body = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.value, size: configData.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: l.digest.value, size: l.size })),
    }));
    const manifest = await storeBlob(body, order);
    const tag = `v${index}`;
    await driver.putContent(layout.manifestRevisionKey(repo, manifest), 'application/vnd.oci.image.manifest.v1+json');
    await driver.putContent(layout.tagKey(repo, tag), manifest.value);
    for (const d of [config, ...layers.map((l) => l.digest)]) await driver.putContent(layout.layerLinkKey(repo, d), '');
    const bytes = body.length + configData.length + layers.reduce((s, l) => s + l.size, 0);
    result.bytes[kind] += bytes;
    if (kind === 'cached') {
      result.cachedDigests.push(manifest, config, ...layers.map((l) => l.digest));
      result.manifestTags.push({ repo, tag, digest: manifest });
    }
  };

  const width = STORAGE === 's3' ? 64 : Math.max(4, cpus().length * 4);
  await pool(Array.from({ length: cachedImages }, (_, i) => i), width, (i) => image(cache, 'cached', i));
  await pool(Array.from({ length: hostedImages }, (_, i) => i), width, (i) => image(hosted, 'hosted', i));
  await pool(Array.from({ length: orphans }, (_, i) => i), width, async () => {
    const data = randomBytes(BLOB_SIZE);
    await storeBlob(data, Math.random());
    result.bytes.orphan += data.length;
  });
  // Served over the 5 s after the build, in rank order; the cleaner runs once they are all past.
  const built = Date.now() + 1000;
  await new ServedBatchWriter(driver, 'bench').write(new Map([...rank].map(([digest, order]) => [digest, Math.floor(built + order * 5000)])));
  await new Promise((r) => setTimeout(r, Math.max(0, built + 5000 - Date.now())));
  return result;
}

async function benchCleaner(built: Built): Promise<Record<string, number>> {
  const cachedUsage = built.bytes.cached + built.bytes.orphan;
  // Evict about a fifth of the cached content: limit = 80 % of it, no threshold.
  const maxSize = Math.floor(cachedUsage * 0.8);
  let started = performance.now();
  const plan = await planEviction(built.driver, { maxSize, thresholdPercentage: 0, graceMs: 0 });
  const planMs = performance.now() - started;
  started = performance.now();
  const freed = await applyEviction(built.driver, plan, log);
  const applyMs = performance.now() - started;
  started = performance.now();
  const again = await planEviction(built.driver, { maxSize, thresholdPercentage: 0, graceMs: 0 });
  const rescanMs = performance.now() - started;
  if (again.usage > maxSize) throw new Error(`after eviction usage ${again.usage} is still above the limit ${maxSize}`);
  console.log(`cleaner: scan of ${BLOBS} blobs (plan) ${seconds(planMs)} (${rate(BLOBS, planMs)} blobs/s); `
    + `eviction of ${plan.evict.length} blobs (${(freed / 1e6).toFixed(1)} MB) + pruning of dangling cache entries ${seconds(applyMs)}; `
    + `re-scan ${seconds(rescanMs)}; total ${seconds(planMs + applyMs)}`);
  return { scannedBlobs: BLOBS, planMs, evicted: plan.evict.length, evictedBytes: freed, applyMs, rescanMs, usageBefore: plan.usage, usageAfter: again.usage, limit: maxSize };
}

async function benchGc(built: Built): Promise<Record<string, number>> {
  let started = performance.now();
  const dry = await collectGarbage(built.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: true, log });
  const dryMs = performance.now() - started;
  started = performance.now();
  const real = await collectGarbage(built.driver, { graceMs: 0, uploadTtlMs: DAY, dryRun: false, log });
  const realMs = performance.now() - started;
  console.log(`gc: mark-and-sweep over the store: dry run ${seconds(dryMs)} (${dry.removed.length} unreferenced), `
    + `real run ${seconds(realMs)} (${real.removed.length} removed)`);
  return { dryRunMs: dryMs, runMs: realMs, removed: real.removed.length };
}

async function benchLogger(built: Built): Promise<Record<string, number>> {
  // DISTINCT names: 10 % manifests by tag (the logger resolves the tag), the rest blobs by digest.
  const manifestNames = Math.max(1, Math.floor(DISTINCT / 10));
  const tags = built.manifestTags.slice(0, manifestNames);
  const blobs = built.cachedDigests.filter((_, i) => i % (LAYERS_PER_MANIFEST + 2) !== 0).slice(0, DISTINCT - tags.length);
  if (blobs.length < DISTINCT - tags.length) {
    throw new Error(`--distinct (BENCH_DISTINCT) ${DISTINCT} needs more cached blobs than --blobs ${BLOBS} makes (${blobs.length + tags.length} names): raise --blobs or lower --distinct`);
  }
  const logPath = join(built.root, 'logs', 'access.log');
  const statePath = join(built.root, 'logs', 'logger-state.json');
  const base = Date.now() - 60_000;
  const parts: string[] = [];
  for (let i = 0; i < LINES; i++) {
    const time = new Date(base + Math.floor((i / LINES) * 60_000)).toISOString();
    const pick = i % DISTINCT;
    const fields = pick < tags.length
      ? { path: `/v2/${NAMESPACE}/${tags[pick]!.repo}/manifests/${tags[pick]!.tag}`, repository: tags[pick]!.repo, reference: tags[pick]!.tag, kind: 'manifest' }
      : { path: `/v2/${NAMESPACE}/bench/repo/blobs/${blobs[pick - tags.length]!.value}`, repository: 'bench/repo', reference: blobs[pick - tags.length]!.value, kind: 'blob' };
    parts.push(JSON.stringify({ level: 30, time, msg: ACCESS_LOG_MESSAGE, user: '-', method: 'GET', ...fields, upstream: NAMESPACE, status: 200, bytes: BLOB_SIZE, durationMs: 0.4 }));
  }
  await mkdir(dirname(logPath), { recursive: true });
  await writeFile(logPath, `${parts.join('\n')}\n`);
  const size = (await stat(logPath)).size;

  const started = performance.now();
  const follower = await followAccessLog({ ...built.storage.settings, root: built.root, accessLogPath: logPath, statePath, flushEvery: 1_000, logLevel: 'silent' }, log, built.driver);
  while (follower.tailer.current.offset < size) await new Promise((r) => setTimeout(r, 5));
  await follower.flush();
  const ms = performance.now() - started;
  await follower.stop();
  const touched = follower.recorder.recorded;
  console.log(`logger: ${LINES} access-log lines (${(size / 1e6).toFixed(1)} MB, ${DISTINCT} distinct names, ${tags.length} of them tags) in ${seconds(ms)}: `
    + `${rate(LINES, ms)} lines/s, ${(size / 1e6 / (ms / 1000)).toFixed(1)} MB/s; ${touched} served times written in ${follower.recorder.batches} batch(es), ${follower.malformed()} malformed`);
  return { lines: LINES, bytes: size, ms, linesPerSecond: rate(LINES, ms), touched };
}

async function main(): Promise<void> {
  console.log(`storage bench (${STORAGE}): ${BLOBS} blobs of ${BLOB_SIZE} B, ${LINES} log lines over ${DISTINCT} names; node ${process.version}, ${cpus().length} CPUs`);
  let started = performance.now();
  const built = await buildStore();
  console.log(`store built in ${seconds(performance.now() - started)} at ${built.root}: cached ${(built.bytes.cached / 1e6).toFixed(1)} MB, `
    + `hosted ${(built.bytes.hosted / 1e6).toFixed(1)} MB, unreferenced ${(built.bytes.orphan / 1e6).toFixed(1)} MB`);
  const results: Record<string, unknown> = { storage: STORAGE, blobs: BLOBS, blobSize: BLOB_SIZE };
  try {
    // The logger first: it needs the cached blobs the cleaner is about to evict.
    results.logger = await benchLogger(built);
    results.cleaner = await benchCleaner(built);
    results.gc = await benchGc(built);
  } finally {
    if (KEEP) console.log(`kept ${built.root}`);
    else {
      started = performance.now();
      await built.storage.cleanup();
    }
  }
  if (JSON_PATH) writeFileSync(JSON_PATH, `${JSON.stringify(results, null, 2)}\n`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
