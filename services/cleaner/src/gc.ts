import { rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../../../lib/log.js';
import { listBlobs, listLinkedDigests, listRepositoryNames, type BlobEntry } from '../../../lib/storage/inventory.js';
import { removeStale } from '../../../lib/storage/atomic.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import { cachedDigests, markHostedReferences } from './marks.js';

export interface GcResult {
  removed: BlobEntry[];
  removedBytes: number;
  /** Unreferenced, but written or served within the grace period (a push may be in progress). */
  spared: number;
  staleUploads: number;
}

/**
 * Mark-and-sweep of the blob store: a blob survives if a hosted manifest references it (or is
 * it), or a cache namespace links it; anything else older than the grace period goes, together
 * with the hosted layer links that point at it. Safe beside running pushes: uploads live under
 * _uploads (not swept here except when stale), and a freshly pushed blob whose manifest is not
 * there yet is younger than the grace period.
 */
export async function collectGarbage(root: string, options: { graceMs: number; uploadTtlMs: number; dryRun: boolean; log: Logger; now?: number }): Promise<GcResult> {
  const now = options.now ?? Date.now();
  const layout = new StorageLayout(root);
  const live = await markHostedReferences(layout);
  for (const digest of await cachedDigests(root)) live.add(digest);
  const removed: BlobEntry[] = [];
  let spared = 0;
  for (const blob of await listBlobs(layout)) {
    if (live.has(blob.digest.value)) continue;
    if (now - Math.max(blob.mtimeMs, blob.atimeMs) < options.graceMs) {
      spared++;
      continue;
    }
    removed.push(blob);
  }
  const staleUploads = options.dryRun ? 0 : await removeStale(layout.uploadsDir, options.uploadTtlMs, now);
  if (!options.dryRun) {
    const gone = new Set(removed.map((b) => b.digest.value));
    for (const blob of removed) await rm(blob.path, { force: true });
    // Links to swept blobs would make a repository claim content it cannot serve.
    for (const name of await listRepositoryNames(layout)) {
      for (const digest of await listLinkedDigests(join(layout.repositoryDir(name), '_layers'))) {
        if (gone.has(digest.value)) await unlink(layout.layerLinkPath(name, digest)).catch(() => {});
      }
    }
  }
  const removedBytes = removed.reduce((sum, b) => sum + b.size, 0);
  options.log.info({ removed: removed.length, removedBytes, spared, staleUploads, dryRun: options.dryRun }, 'garbage collection done');
  return { removed, removedBytes, spared, staleUploads };
}
