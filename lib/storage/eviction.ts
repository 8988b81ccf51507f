import { readdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { filesize } from 'filesize';
import type { Logger } from '../log.js';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { hostedDigests, listBlobs, listCacheLayouts, listLinkedDigests, listRepositoryNames, type BlobEntry } from './inventory.js';
import { StorageLayout } from './layout.js';

export function humanSize(bytes: number): string {
  return filesize(bytes, { base: 2, standard: 'iec' }) as string;
}

/**
 * The cleaner's eviction: planned here (lib, not services/cleaner) because the cleaner service,
 * `stevedore clean` and the gateway's console (next to evict, run now) must agree on one plan.
 */
export interface EvictionPlan {
  /** Bytes of cached content: every blob the hosted store does not hold (hosted content is not counted). */
  usage: number;
  limit: number;
  /** Usage above which a run evicts: limit × (1 + threshold/100). */
  trigger: number;
  /** Least recently served first, until usage would be at or under the limit. */
  evict: Array<BlobEntry & { reason: string }>;
  /** Cached bytes that may not be evicted now (written or served within the grace period). */
  pinned: number;
  /** Bytes of hosted content (pushed or seeded): never evicted, and not part of `usage`. */
  hosted: number;
}

/**
 * Decides what one run evicts, from one walk of the blob store: nothing while the cached content
 * (everything but hosted blobs, which have no upstream to be fetched from again) is under the
 * trigger; otherwise cached blobs by last-served time (atime, which the logger sets), skipping
 * anything written or served within the grace period, until usage is at or under the limit.
 */
export async function planEviction(root: string, options: { maxSize: number; thresholdPercentage: number; graceMs: number; now?: number }): Promise<EvictionPlan> {
  const now = options.now ?? Date.now();
  const layout = new StorageLayout(root);
  const blobs = await listBlobs(layout);
  const hostedSet = await hostedDigests(layout);
  const limit = options.maxSize;
  const trigger = Math.floor(limit * (1 + options.thresholdPercentage / 100));
  const plan: EvictionPlan = { usage: 0, limit, trigger, evict: [], pinned: 0, hosted: 0 };
  const cached: BlobEntry[] = [];
  for (const blob of blobs) {
    if (hostedSet.has(blob.digest.value)) plan.hosted += blob.size;
    else {
      plan.usage += blob.size;
      cached.push(blob);
    }
  }
  if (plan.usage <= trigger) return plan;
  const candidates: BlobEntry[] = [];
  for (const blob of cached) {
    if (now - Math.max(blob.atimeMs, blob.mtimeMs) < options.graceMs) plan.pinned += blob.size;
    else candidates.push(blob);
  }
  candidates.sort((a, b) => a.atimeMs - b.atimeMs);
  let remaining = plan.usage;
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
  let kept = 0;
  // The plan is as old as the walk: re-check just before removing. A blob pushed to (or mounted
  // into) a hosted repository meanwhile has become hosted content with no upstream to refetch it
  // from; one served meanwhile (the logger moved its atime) is no longer least recently served.
  const hostedNow = await hostedDigests(new StorageLayout(root));
  for (let i = 0; i < plan.evict.length; i += BATCH) {
    await Promise.all(plan.evict.slice(i, i + BATCH).map(async (blob) => {
      const info = await stat(blob.path).catch(() => undefined);
      if (!info) return;
      if (hostedNow.has(blob.digest.value) || info.atimeMs > blob.atimeMs || info.mtimeMs > blob.mtimeMs) {
        kept++;
        return;
      }
      await rm(blob.path, { force: true });
      freed += blob.size;
    }));
  }
  const pruned = await pruneDanglingCacheEntries(root);
  log.info({
    evicted: plan.evict.length - kept, keptSincePlanned: kept, freed: humanSize(freed), usageBefore: humanSize(plan.usage),
    usageAfter: humanSize(plan.usage - freed), limit: humanSize(plan.limit), prunedEntries: pruned,
  }, 'cleaner evicted least recently served cached content');
  return freed;
}

/** File operations run this many at a time: the work is I/O-bound, and the thread pool overlaps it. */
const BATCH = 64;

/**
 * Which of `digests` are no longer stored. stat, never a read: reading a blob would load it whole
 * and, on relatime mounts, move its atime (the LRU clock).
 */
async function notStored(layout: StorageLayout, digests: Digest[]): Promise<Digest[]> {
  const gone: Digest[] = [];
  for (let i = 0; i < digests.length; i += BATCH) {
    const batch = digests.slice(i, i + BATCH);
    const present = await Promise.all(batch.map((d) => stat(layout.blobPath(d)).then(() => true, () => false)));
    batch.forEach((d, j) => { if (!present[j]) gone.push(d); });
  }
  return gone;
}

export async function pruneDanglingCacheEntries(root: string): Promise<number> {
  let pruned = 0;
  const blobsLayout = new StorageLayout(root);
  for (const layout of await listCacheLayouts(root)) {
    for (const name of await listRepositoryNames(layout)) {
      for (const digest of await notStored(blobsLayout, await listLinkedDigests(join(layout.repositoryDir(name), '_layers')))) {
        await unlink(layout.layerLinkPath(name, digest)).catch(() => {});
        pruned++;
      }
      const goneRevisions = new Set<string>();
      for (const digest of await notStored(blobsLayout, await listLinkedDigests(join(layout.manifestsDir(name), 'revisions')))) {
        await unlink(layout.manifestRevisionPath(name, digest)).catch(() => {});
        goneRevisions.add(digest.value);
        pruned++;
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
