import { filesize } from 'filesize';
import type { Logger } from '../log.js';
import type { Digest } from '../oci/digest.js';
import { isStorageNotFound, type StorageDriver } from './driver/driver.js';
import { hostedDigests, listBlobs, listCacheLayouts, scanRepositories, tagTarget, type BlobEntry } from './inventory.js';
import { StorageLayout } from './layout.js';
import { readServedTimes } from './served-index.js';

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
  /** How many blobs the store held. */
  blobCount: number;
  /** Every digest the listing found (to tell a dangling link from a blob stored since, cheaply). */
  stored: ReadonlySet<string>;
}

/**
 * Decides what one run evicts, from one listing of the blob store: nothing while the cached content
 * (everything but hosted blobs, which have no upstream to be fetched from again) is under the
 * trigger; otherwise cached blobs by last-served time (the served index the logger writes, else the
 * blob's modification time), skipping anything written or served within the grace period, until
 * usage is at or under the limit.
 */
export async function planEviction(driver: StorageDriver, options: { maxSize: number; thresholdPercentage: number; graceMs: number; now?: number }): Promise<EvictionPlan> {
  const now = options.now ?? Date.now();
  const [blobs, hostedSet] = await Promise.all([readServedTimes(driver).then((served) => listBlobs(driver, served)), hostedDigests(driver)]);
  const limit = options.maxSize;
  const trigger = Math.floor(limit * (1 + options.thresholdPercentage / 100));
  const plan: EvictionPlan = { usage: 0, limit, trigger, evict: [], pinned: 0, hosted: 0, blobCount: blobs.length, stored: new Set(blobs.map((b) => b.digest.value)) };
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
    if (now - blob.lastServedMs < options.graceMs) plan.pinned += blob.size;
    else candidates.push(blob);
  }
  candidates.sort((a, b) => a.lastServedMs - b.lastServedMs || (a.key < b.key ? -1 : 1));
  let remaining = plan.usage;
  for (const blob of candidates) {
    if (remaining <= limit) break;
    const idleMinutes = Math.round((now - blob.lastServedMs) / 60_000);
    plan.evict.push({ ...blob, reason: `cached, last served ${idleMinutes} min ago` });
    remaining -= blob.size;
  }
  return plan;
}

/** Store operations run this many at a time: each is a round trip (S3) or a syscall (disk). */
const BATCH = 64;

/**
 * Removes the planned blobs, then every cached manifest revision, tag and layer link whose content
 * is gone, so a cache never serves a manifest it cannot back; the next pull fetches it again.
 */
export async function applyEviction(driver: StorageDriver, plan: EvictionPlan, log: Logger): Promise<number> {
  let freed = 0;
  let kept = 0;
  // The plan is as old as the listing: re-check just before removing. A blob pushed to (or mounted
  // into) a hosted repository meanwhile has become hosted content with no upstream to refetch it
  // from; one served meanwhile (a newer time in the served index) is no longer least recently served.
  const [hostedNow, servedNow] = await Promise.all([hostedDigests(driver), readServedTimes(driver)]);
  const gone = new Set<string>();
  for (let i = 0; i < plan.evict.length; i += BATCH) {
    // Each batch: the re-checks at once, then one delete request for what is still to go (S3:
    // DeleteObjects), right after its checks.
    const doomed: EvictionPlan['evict'] = [];
    await Promise.all(plan.evict.slice(i, i + BATCH).map(async (blob) => {
      const info = await driver.stat(blob.key).catch((err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err)));
      if (!info) {
        gone.add(blob.digest.value);
        return;
      }
      if (hostedNow.has(blob.digest.value) || (servedNow.get(blob.digest.value) ?? 0) > blob.lastServedMs || info.modifiedAt.getTime() > blob.modifiedMs) {
        kept++;
        return;
      }
      doomed.push(blob);
    }));
    await driver.deleteMany(doomed.map((blob) => blob.key));
    for (const blob of doomed) {
      gone.add(blob.digest.value);
      freed += blob.size;
    }
  }
  const pruned = await pruneDanglingCacheEntries(driver, { gone, stored: plan.stored });
  log.info({
    evicted: plan.evict.length - kept, keptSincePlanned: kept, freed: humanSize(freed), usageBefore: humanSize(plan.usage),
    usageAfter: humanSize(plan.usage - freed), limit: humanSize(plan.limit), prunedEntries: pruned,
  }, 'cleaner evicted least recently served cached content');
  return freed;
}

/**
 * Removes cache links, revisions and tags whose blob is gone. `known.gone` are digests known to be
 * removed; `known.stored` a listing of blobs: a link to a digest in neither is checked with a stat
 * (a blob stored since the listing); without `known`, every link is checked.
 */
export async function pruneDanglingCacheEntries(driver: StorageDriver, known?: { gone: ReadonlySet<string>; stored: ReadonlySet<string> }): Promise<number> {
  const blobs = new StorageLayout('');
  const missing = new Map<string, Promise<boolean>>();
  const isGone = (digest: Digest): Promise<boolean> => {
    if (known?.gone.has(digest.value)) return Promise.resolve(true);
    if (known?.stored.has(digest.value)) return Promise.resolve(false);
    let found = missing.get(digest.value);
    if (!found) {
      found = driver.stat(blobs.blobKey(digest)).then(() => false, (err: unknown) => (isStorageNotFound(err) ? true : Promise.reject(err)));
      missing.set(digest.value, found);
    }
    return found;
  };
  let pruned = 0;
  for (const layout of await listCacheLayouts(driver)) {
    for (const repository of await scanRepositories(driver, layout)) {
      const goneRevisions = new Set<string>();
      const links = [...repository.layers, ...repository.revisions];
      for (let i = 0; i < links.length; i += BATCH) {
        const dangling: typeof links = [];
        await Promise.all(links.slice(i, i + BATCH).map(async (link) => {
          if (await isGone(link.digest)) dangling.push(link);
        }));
        await driver.deleteMany(dangling.map((link) => link.key));
        for (const link of dangling) if (repository.revisions.includes(link)) goneRevisions.add(link.digest.value);
        pruned += dangling.length;
      }
      if (goneRevisions.size === 0) continue;
      for (const tag of repository.tags) {
        const key = layout.tagKey(repository.name, tag);
        const target = tagTarget((await driver.getContent(key).catch(() => Buffer.alloc(0))).toString('utf8'));
        if (target && goneRevisions.has(target.value)) {
          await driver.delete(key);
          pruned++;
        }
      }
    }
  }
  return pruned;
}
