import { tryParseDigest, type Digest } from '../oci/digest.js';
import { listAll, type StorageDriver } from './driver/driver.js';
import { BLOBS_PREFIX, CACHE_PREFIX, NAMESPACE_PATTERN, StorageLayout } from './layout.js';
import type { ServedTimes } from './served-index.js';

/**
 * What the cleaner, GC and the console know of a store, read through the storage driver with a few
 * listings (S3: ~1 LIST per 1,000 keys, run in parallel), never file paths: the inventory hands out
 * keys, and the callers delete through the driver.
 */

/** One stored blob with what eviction and garbage collection decide by. */
export interface BlobEntry {
  digest: Digest;
  key: string;
  size: number;
  /** When the blob was written (the store's modification time). */
  modifiedMs: number;
  /** When it was last served: the served index's time, else `modifiedMs`. */
  lastServedMs: number;
}

/** Listings run this many at a time: each is a round trip (S3) or a directory read (disk). */
const CONCURRENCY = 16;

async function inParallel<T>(items: readonly T[], run: (item: T) => Promise<void>, concurrency = CONCURRENCY): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < items.length) await run(items[next++]!);
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

/** Every "directory" directly under `prefix` (delimiter listing, all pages). */
export async function listPrefixes(driver: StorageDriver, prefix: string): Promise<string[]> {
  return (await listAll(driver, prefix)).prefixes;
}

/**
 * Every blob of the store: `blobs/<alg>/<2 hex>/<hex>`, one listing per shard, shards in parallel
 * (100,000 blobs on S3: 256 LISTs, 16 at a time). `served` gives the last-served times.
 */
export async function listBlobs(driver: StorageDriver, served: ServedTimes = new Map()): Promise<BlobEntry[]> {
  const shards: string[] = [];
  for (const algorithm of await listPrefixes(driver, BLOBS_PREFIX)) shards.push(...await listPrefixes(driver, algorithm));
  const result: BlobEntry[] = [];
  await inParallel(shards, async (shard) => {
    for await (const info of driver.walk(shard)) {
      const parts = info.key.split('/');
      if (parts.length !== 4) continue;
      const digest = tryParseDigest(`${parts[1]}:${parts[3]}`);
      if (!digest || parts[2] !== parts[3]!.slice(0, 2)) continue;
      const modifiedMs = info.modifiedAt.getTime();
      result.push({ digest, key: info.key, size: info.size, modifiedMs, lastServedMs: Math.max(served.get(digest.value) ?? modifiedMs, modifiedMs) });
    }
  });
  return result;
}

/** The digest a stored tag names: the tag record's text, or its `digest` field when the record is JSON. */
export function tagTarget(text: string): Digest | undefined {
  const trimmed = text.trim();
  if (trimmed.startsWith('{')) {
    try {
      const value = (JSON.parse(trimmed) as { digest?: unknown }).digest;
      return typeof value === 'string' ? tryParseDigest(value) : undefined;
    } catch {
      return undefined;
    }
  }
  return tryParseDigest(trimmed);
}

/** A link key (layer link or manifest revision) with the digest it names and when it was written. */
export interface LinkEntry {
  digest: Digest;
  key: string;
  modifiedMs: number;
}

/** One repository as found by scanRepositories. */
export interface RepositoryScan {
  name: string;
  layers: LinkEntry[];
  revisions: LinkEntry[];
  /** Tag names (their keys: layout.tagKey(name, tag)). */
  tags: string[];
}

/**
 * Every repository of a layout (hosted, or one cache namespace) with its layer links, manifest
 * revisions and tags, from ONE walk of its prefix (on S3 a repository tree costs no per-directory
 * listing). A repository name ends at its first component starting with `_` (the spec's names cannot).
 */
export async function scanRepositories(driver: StorageDriver, layout: StorageLayout): Promise<RepositoryScan[]> {
  const prefix = layout.repositoriesPrefix;
  const repositories = new Map<string, RepositoryScan>();
  for await (const info of driver.walk(prefix)) {
    const parts = info.key.slice(prefix.length).split('/');
    const end = parts.findIndex((p) => p.startsWith('_'));
    if (end <= 0) continue;
    const name = parts.slice(0, end).join('/');
    let repository = repositories.get(name);
    const rest = parts.slice(end);
    const link = (algorithm: string | undefined, hex: string | undefined, into: 'layers' | 'revisions') => {
      const digest = tryParseDigest(`${algorithm}:${hex}`);
      if (!digest) return;
      repository ??= { name, layers: [], revisions: [], tags: [] };
      repositories.set(name, repository);
      repository[into].push({ digest, key: info.key, modifiedMs: info.modifiedAt.getTime() });
    };
    if (rest[0] === '_layers' && rest.length === 3) link(rest[1], rest[2], 'layers');
    else if (rest[0] === '_manifests' && rest[1] === 'revisions' && rest.length === 4) link(rest[2], rest[3], 'revisions');
    else if (rest[0] === '_manifests' && rest[1] === 'tags' && rest.length === 3) {
      repository ??= { name, layers: [], revisions: [], tags: [] };
      repositories.set(name, repository);
      repository.tags.push(rest[2]!);
    }
  }
  return [...repositories.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Layouts of every pull-through cache namespace under `cache/`. */
export async function listCacheLayouts(driver: StorageDriver, root = ''): Promise<StorageLayout[]> {
  return (await listPrefixes(driver, CACHE_PREFIX))
    .map((p) => p.slice(CACHE_PREFIX.length, -1))
    .filter((ns) => NAMESPACE_PATTERN.test(ns))
    .map((ns) => new StorageLayout(root, { namespace: ns }));
}

/** Every repository of the hosted store and of every cache namespace, each walked in parallel. */
export async function scanAllRepositories(driver: StorageDriver): Promise<{ hosted: RepositoryScan[]; cache: Array<{ layout: StorageLayout; repositories: RepositoryScan[] }> }> {
  const layouts = await listCacheLayouts(driver);
  const [hosted, ...cached] = await Promise.all([new StorageLayout(''), ...layouts].map((layout) => scanRepositories(driver, layout)));
  return { hosted: hosted!, cache: layouts.map((layout, i) => ({ layout, repositories: cached[i]! })) };
}

/** Digests the repositories link: their layers and manifest revisions. */
export function linkedDigests(repositories: readonly RepositoryScan[], into = new Set<string>()): Set<string> {
  for (const repository of repositories) {
    for (const link of repository.layers) into.add(link.digest.value);
    for (const link of repository.revisions) into.add(link.digest.value);
  }
  return into;
}

/**
 * Digests the hosted (pushed or seeded) store holds. They have no upstream to be fetched from
 * again, so the cleaner never evicts them.
 */
export async function hostedDigests(driver: StorageDriver): Promise<Set<string>> {
  return linkedDigests(await scanRepositories(driver, new StorageLayout('')));
}

/** Digests any pull-through cache namespace links (its manifests and layers). */
export async function cachedDigests(driver: StorageDriver): Promise<Set<string>> {
  const digests = new Set<string>();
  for (const layout of await listCacheLayouts(driver)) linkedDigests(await scanRepositories(driver, layout), digests);
  return digests;
}
