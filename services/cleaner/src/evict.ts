import { readdir, readFile, rm, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { filesize } from 'filesize';
import type { Logger } from '../../../lib/log.js';
import { tryParseDigest } from '../../../lib/oci/digest.js';
import { listBlobs, listCacheLayouts, listLinkedDigests, listRepositoryNames, type BlobEntry } from '../../../lib/storage/inventory.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import { hostedDigests } from './marks.js';

export function humanSize(bytes: number): string {
  return filesize(bytes, { base: 2, standard: 'iec' }) as string;
}

export interface EvictionPlan {
  usage: number;
  limit: number;
  /** Usage above which a run evicts: limit × (1 + threshold/100). */
  trigger: number;
  /** Least recently served first, until usage would be at or under the limit. */
  evict: Array<BlobEntry & { reason: string }>;
  /** Bytes that may not be evicted (hosted content, or within the grace period). */
  pinned: number;
}

/**
 * Decides what one run evicts, from one walk of the blob store: nothing while usage is under the
 * trigger; otherwise cached (never hosted) blobs by last-served time (atime, which the logger
 * sets), skipping anything touched within the grace period, until usage is at or under the limit.
 */
export async function planEviction(root: string, options: { maxSize: number; thresholdPercentage: number; graceMs: number; now?: number }): Promise<EvictionPlan> {
  const now = options.now ?? Date.now();
  const layout = new StorageLayout(root);
  const blobs = await listBlobs(layout);
  const usage = blobs.reduce((sum, b) => sum + b.size, 0);
  const limit = options.maxSize;
  const trigger = Math.floor(limit * (1 + options.thresholdPercentage / 100));
  const plan: EvictionPlan = { usage, limit, trigger, evict: [], pinned: 0 };
  if (usage <= trigger) return plan;
  const hosted = await hostedDigests(layout);
  const candidates: BlobEntry[] = [];
  for (const blob of blobs) {
    if (hosted.has(blob.digest.value) || now - Math.max(blob.atimeMs, blob.mtimeMs) < options.graceMs) plan.pinned += blob.size;
    else candidates.push(blob);
  }
  candidates.sort((a, b) => a.atimeMs - b.atimeMs);
  let remaining = usage;
  for (const blob of candidates) {
    if (remaining <= limit) break;
    const idleMinutes = Math.round((now - blob.atimeMs) / 60_000);
    plan.evict.push({ ...blob, reason: `cached, last served ${idleMinutes} min ago` });
    remaining -= blob.size;
  }
  return plan;
}

/**
 * Removes the planned blobs, then every cached manifest revision, tag and layer link whose content
 * is gone, so a cache never serves a manifest it cannot back; the next pull fetches it again.
 */
export async function applyEviction(root: string, plan: EvictionPlan, log: Logger): Promise<number> {
  let freed = 0;
  for (const blob of plan.evict) {
    await rm(blob.path, { force: true });
    freed += blob.size;
  }
  const pruned = await pruneDanglingCacheEntries(root);
  log.info({
    evicted: plan.evict.length, freed: humanSize(freed), usageBefore: humanSize(plan.usage),
    usageAfter: humanSize(plan.usage - freed), limit: humanSize(plan.limit), prunedEntries: pruned,
  }, 'cleaner evicted least recently served cached content');
  return freed;
}

async function exists(path: string): Promise<boolean> {
  return readFile(path).then(() => true, () => false);
}

export async function pruneDanglingCacheEntries(root: string): Promise<number> {
  let pruned = 0;
  const blobsLayout = new StorageLayout(root);
  for (const layout of await listCacheLayouts(root)) {
    for (const name of await listRepositoryNames(layout)) {
      for (const digest of await listLinkedDigests(join(layout.repositoryDir(name), '_layers'))) {
        if (!(await exists(blobsLayout.blobPath(digest)))) {
          await unlink(layout.layerLinkPath(name, digest)).catch(() => {});
          pruned++;
        }
      }
      const goneRevisions = new Set<string>();
      for (const digest of await listLinkedDigests(join(layout.manifestsDir(name), 'revisions'))) {
        if (!(await exists(blobsLayout.blobPath(digest)))) {
          await unlink(layout.manifestRevisionPath(name, digest)).catch(() => {});
          goneRevisions.add(digest.value);
          pruned++;
        }
      }
      if (goneRevisions.size === 0) continue;
      for (const tag of await readdir(layout.tagsDir(name)).catch(() => [] as string[])) {
        const target = tryParseDigest((await readFile(layout.tagPath(name, tag), 'utf8').catch(() => '')).trim());
        if (target && goneRevisions.has(target.value)) {
          await unlink(layout.tagPath(name, tag)).catch(() => {});
          pruned++;
        }
      }
    }
  }
  return pruned;
}
