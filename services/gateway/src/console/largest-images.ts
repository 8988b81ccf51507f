import { isStorageNotFound, type StorageDriver } from '../../../../lib/storage/driver/driver.js';
import type { StoreView } from './store-view.js';

/** The last ranking a console computed, kept in the store for the next console start (on any appliance). */
export const LARGEST_IMAGES_KEY = '_state/console/largest-images.json';

export async function storeLargest(driver: StorageDriver, rows: LargeImage[]): Promise<void> {
  await driver.putContent(LARGEST_IMAGES_KEY, JSON.stringify({ at: Date.now(), rows }));
}

export async function readStoredLargest(driver: StorageDriver): Promise<LargeImage[] | undefined> {
  try {
    const value = JSON.parse((await driver.getContent(LARGEST_IMAGES_KEY)).toString('utf8')) as { rows?: unknown };
    return Array.isArray(value.rows) ? value.rows as LargeImage[] : undefined;
  } catch (err) {
    if (isStorageNotFound(err) || err instanceof SyntaxError) return undefined;
    throw err;
  }
}

export interface LargeImage {
  /** The upstream host whose cache holds it. */
  upstream: string;
  repository: string;
  /** Tags pointing at this manifest, sorted. */
  tags: string[];
  digest: string;
  /** Manifest, config and layers as the manifest lists them (an index: with its stored children's). */
  size: number;
  lastServed?: string;
}

/** Tags read at a time: each is a few small file reads. */
const CONCURRENCY = 16;

/**
 * The largest cached images (one row per manifest, its tags merged), largest first: every tag of
 * every cache repository read through the store view (~1 ms a tag; callers reuse the result).
 */
export async function largestCachedImages(store: StoreView, limit: number): Promise<LargeImage[]> {
  const work: Array<{ source: string; repository: string; tag: string }> = [];
  for (const row of await store.repositories()) {
    if (row.source === 'hosted' || row.tags === 0) continue;
    for (const tag of (await store.tagNames(row.source, row.name)) ?? []) work.push({ source: row.source, repository: row.name, tag });
  }
  const byManifest = new Map<string, LargeImage>();
  let next = 0;
  const worker = async () => {
    while (next < work.length) {
      const item = work[next++]!;
      const tag = await store.tag(item.source, item.repository, item.tag).catch(() => undefined);
      if (!tag) continue;
      const key = `${item.source}\0${item.repository}\0${tag.digest}`;
      const found = byManifest.get(key);
      if (found) found.tags.push(item.tag);
      else byManifest.set(key, { upstream: item.source, repository: item.repository, tags: [item.tag], digest: tag.digest, size: tag.size, ...(tag.lastServed ? { lastServed: tag.lastServed } : {}) });
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, work.length) }, worker));
  const rows = [...byManifest.values()];
  for (const row of rows) row.tags.sort();
  return rows.sort((a, b) => b.size - a.size || `${a.upstream}/${a.repository}`.localeCompare(`${b.upstream}/${b.repository}`) || a.digest.localeCompare(b.digest)).slice(0, limit);
}
