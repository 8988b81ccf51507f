import type { Logger } from '../../../lib/log.js';
import { isStorageNotFound, type StorageDriver } from '../../../lib/storage/driver/driver.js';
import { linkedDigests, listBlobs, scanAllRepositories, type BlobEntry, type RepositoryScan } from '../../../lib/storage/inventory.js';
import { readServedTimes } from '../../../lib/storage/served-index.js';
import { markHostedReferences } from './marks.js';

export interface GcResult {
  removed: BlobEntry[];
  removedBytes: number;
  /** Unreferenced, but written or served within the grace period (a push may be in progress). */
  spared: number;
  /** Upload sessions idle past the upload TTL (removed, or that a dry run would remove). */
  staleUploads: number;
  /** Writes never committed (a killed process; on S3 an incomplete multipart upload) older than the grace period. */
  abortedWrites: number;
}

/** Store operations run this many at a time: each is a round trip (S3) or a syscall (disk). */
const BATCH = 64;

/** Digests of `candidates` that a hosted repository linked within the grace period (a push or mount in progress). */
function recentlyLinked(hosted: readonly RepositoryScan[], candidates: ReadonlySet<string>, graceMs: number, now: number): Set<string> {
  const recent = new Set<string>();
  if (candidates.size === 0 || graceMs <= 0) return recent;
  for (const repository of hosted) {
    for (const link of repository.layers) {
      if (candidates.has(link.digest.value) && now - link.modifiedMs < graceMs) recent.add(link.digest.value);
    }
  }
  return recent;
}

/** Everything that keeps a blob: hosted manifests and what they reference, and cache links. */
async function mark(driver: StorageDriver): Promise<{ live: Set<string>; hosted: RepositoryScan[] }> {
  const scan = await scanAllRepositories(driver);
  const live = await markHostedReferences(driver, scan.hosted);
  for (const namespace of scan.cache) linkedDigests(namespace.repositories, live);
  return { live, hosted: scan.hosted };
}

/**
 * Mark-and-sweep of the blob store over listings: a blob survives if a hosted manifest references
 * it (or is it), or a cache namespace links it; anything else older than the grace period goes,
 * together with the hosted layer links that point at it. Safe beside running pushes: uploads live
 * in their sessions (not swept here except when stale), a freshly pushed blob whose manifest is not
 * there yet is younger than the grace period, an old blob that a push links again (its upload found
 * it stored, or a mount) has a link younger than the grace period, and the store is marked again
 * right before the sweep, so a manifest pushed while the run listed the store keeps its blobs.
 * Also removes upload sessions idle past the upload TTL and aborts writes never committed
 * (driver.listIncompleteWrites: on S3, multipart uploads) older than the grace period.
 */
export async function collectGarbage(driver: StorageDriver, options: {
  graceMs: number; uploadTtlMs: number; dryRun: boolean; log: Logger; now?: number;
  /** Called between the mark and the sweep (tests use it to race a push with the run). */
  beforeSweep?: () => Promise<void>;
  /** False once the cleaner lease was taken over (another GC may be running): then nothing is removed. */
  stillHeld?: () => boolean;
}): Promise<GcResult> {
  const started = Date.now();
  const now = options.now ?? started;
  const [{ live, hosted }, blobs] = await Promise.all([mark(driver), readServedTimes(driver).then((served) => listBlobs(driver, served))]);
  let candidates: BlobEntry[] = [];
  let spared = 0;
  for (const blob of blobs) {
    if (live.has(blob.digest.value)) continue;
    if (now - blob.lastServedMs < options.graceMs) {
      spared++;
      continue;
    }
    candidates.push(blob);
  }
  const recent = recentlyLinked(hosted, new Set(candidates.map((b) => b.digest.value)), options.graceMs, now);
  spared += recent.size;
  candidates = candidates.filter((b) => !recent.has(b.digest.value));
  await options.beforeSweep?.();
  let removed = candidates;
  let hostedNow = hosted;
  if (!options.dryRun && candidates.length > 0) {
    // Mark again: pushes went on while the store was listed.
    const again = await mark(driver);
    hostedNow = again.hosted;
    const servedNow = await readServedTimes(driver);
    const relinked = recentlyLinked(again.hosted, new Set(candidates.map((b) => b.digest.value)), options.graceMs, now + (Date.now() - started));
    removed = [];
    for (let i = 0; i < candidates.length; i += BATCH) {
      const batch = candidates.slice(i, i + BATCH);
      const infos = await Promise.all(batch.map((b) => driver.stat(b.key).catch((err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err)))));
      batch.forEach((blob, j) => {
        const info = infos[j];
        if (!info) return;
        if (again.live.has(blob.digest.value) || relinked.has(blob.digest.value) || info.modifiedAt.getTime() > blob.modifiedMs
          || (servedNow.get(blob.digest.value) ?? 0) > blob.lastServedMs) spared++;
        else removed.push(blob);
      });
    }
  }
  if (!options.dryRun && options.stillHeld && !options.stillHeld()) throw new Error('garbage collection stopped before removing anything: the cleaner lease was lost');
  let staleUploads = 0;
  for await (const session of driver.uploads.list()) {
    if (now - session.startedAt.getTime() < options.uploadTtlMs) continue;
    staleUploads++;
    if (!options.dryRun) await driver.uploads.delete(session.id);
  }
  let abortedWrites = 0;
  for await (const write of driver.listIncompleteWrites()) {
    if (now - write.startedAt.getTime() < options.graceMs) continue;
    abortedWrites++;
    if (!options.dryRun) await driver.abortIncompleteWrite(write);
  }
  if (!options.dryRun && removed.length > 0) {
    const gone = new Set(removed.map((b) => b.digest.value));
    await driver.deleteMany(removed.map((b) => b.key));
    // Links to swept blobs would make a repository claim content it cannot serve.
    const dangling = hostedNow.flatMap((repository) => repository.layers.filter((link) => gone.has(link.digest.value)));
    await driver.deleteMany(dangling.map((link) => link.key));
  }
  const removedBytes = removed.reduce((sum, b) => sum + b.size, 0);
  options.log.info({ store: driver.location, removed: removed.length, removedBytes, spared, staleUploads, abortedWrites, dryRun: options.dryRun }, 'garbage collection done');
  return { removed, removedBytes, spared, staleUploads, abortedWrites };
}
