import { rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../../lib/log.js';
import { cachedDigests, listBlobs, listLinkedDigests, listRepositoryNames, type BlobEntry } from '../../../lib/storage/inventory.js';
import { removeStale } from '../../../lib/storage/atomic.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import { markHostedReferences } from './marks.js';

export interface GcResult {
  removed: BlobEntry[];
  removedBytes: number;
  /** Unreferenced, but written or served within the grace period (a push may be in progress). */
  spared: number;
  staleUploads: number;
}

/** File operations run this many at a time: the work is I/O-bound, and the thread pool overlaps it. */
const BATCH = 64;

/** Digests of `candidates` that a hosted repository linked within the grace period (a push or mount in progress). */
async function recentlyLinked(layout: StorageLayout, candidates: ReadonlySet<string>, graceMs: number, now: number): Promise<Set<string>> {
  const recent = new Set<string>();
  if (candidates.size === 0 || graceMs <= 0) return recent;
  for (const name of await listRepositoryNames(layout)) {
    for (const digest of await listLinkedDigests(join(layout.repositoryDir(name), '_layers'))) {
      if (!candidates.has(digest.value) || recent.has(digest.value)) continue;
      const info = await stat(layout.layerLinkPath(name, digest)).catch(() => undefined);
      if (info && now - info.mtimeMs < graceMs) recent.add(digest.value);
    }
  }
  return recent;
}

/** Everything that keeps a blob: hosted manifests and what they reference, and cache links. */
async function mark(root: string, layout: StorageLayout): Promise<Set<string>> {
  const live = await markHostedReferences(layout);
  for (const digest of await cachedDigests(root)) live.add(digest);
  return live;
}

/**
 * Mark-and-sweep of the blob store: a blob survives if a hosted manifest references it (or is
 * it), or a cache namespace links it; anything else older than the grace period goes, together
 * with the hosted layer links that point at it. Safe beside running pushes: uploads live under
 * _uploads (not swept here except when stale), a freshly pushed blob whose manifest is not there
 * yet is younger than the grace period, an old blob that a push links again (its upload found it
 * stored, or a mount) has a link younger than the grace period, and the store is marked again
 * right before the sweep, so a manifest pushed while the run walked the store keeps its blobs.
 */
export async function collectGarbage(root: string, options: {
  graceMs: number; uploadTtlMs: number; dryRun: boolean; log: Logger; now?: number;
  /** Called between the mark and the sweep (tests use it to race a push with the run). */
  beforeSweep?: () => Promise<void>;
}): Promise<GcResult> {
  const started = Date.now();
  const now = options.now ?? started;
  const layout = new StorageLayout(root);
  const live = await mark(root, layout);
  let candidates: BlobEntry[] = [];
  let spared = 0;
  for (const blob of await listBlobs(layout)) {
    if (live.has(blob.digest.value)) continue;
    if (now - Math.max(blob.mtimeMs, blob.atimeMs) < options.graceMs) {
      spared++;
      continue;
    }
    candidates.push(blob);
  }
  const recent = await recentlyLinked(layout, new Set(candidates.map((b) => b.digest.value)), options.graceMs, now);
  spared += recent.size;
  candidates = candidates.filter((b) => !recent.has(b.digest.value));
  await options.beforeSweep?.();
  let removed = candidates;
  if (!options.dryRun && candidates.length > 0) {
    // Mark again: pushes went on while the store was walked.
    const liveNow = await mark(root, layout);
    const relinked = await recentlyLinked(layout, new Set(candidates.map((b) => b.digest.value)), options.graceMs, now + (Date.now() - started));
    removed = [];
    for (let i = 0; i < candidates.length; i += BATCH) {
      const batch = candidates.slice(i, i + BATCH);
      const infos = await Promise.all(batch.map((b) => stat(b.path).catch(() => undefined)));
      batch.forEach((blob, j) => {
        const info = infos[j];
        if (!info) return;
        if (liveNow.has(blob.digest.value) || relinked.has(blob.digest.value) || info.mtimeMs > blob.mtimeMs || info.atimeMs > blob.atimeMs) spared++;
        else removed.push(blob);
      });
    }
  }
  const staleUploads = options.dryRun ? 0 : await removeStale(layout.uploadsDir, options.uploadTtlMs, now);
  if (!options.dryRun) {
    const gone = new Set(removed.map((b) => b.digest.value));
    for (let i = 0; i < removed.length; i += BATCH) await Promise.all(removed.slice(i, i + BATCH).map((b) => rm(b.path, { force: true })));
    // Links to swept blobs would make a repository claim content it cannot serve.
    if (gone.size > 0) {
      for (const name of await listRepositoryNames(layout)) {
        for (const digest of await listLinkedDigests(join(layout.repositoryDir(name), '_layers'))) {
          if (gone.has(digest.value)) await unlink(layout.layerLinkPath(name, digest)).catch(() => {});
        }
      }
    }
  }
  const removedBytes = removed.reduce((sum, b) => sum + b.size, 0);
  options.log.info({ removed: removed.length, removedBytes, spared, staleUploads, dryRun: options.dryRun }, 'garbage collection done');
  return { removed, removedBytes, spared, staleUploads };
}
