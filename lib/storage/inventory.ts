import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { NAMESPACE_PATTERN, StorageLayout } from './layout.js';

/** One stored blob with what eviction and garbage collection decide by. */
export interface BlobEntry {
  digest: Digest;
  path: string;
  size: number;
  atimeMs: number;
  mtimeMs: number;
}

async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw err;
  }
}

/** Every blob of the store, in one walk of `blobs/<alg>/<2 hex>/<hex>`. */
export async function listBlobs(layout: StorageLayout): Promise<BlobEntry[]> {
  const result: BlobEntry[] = [];
  for (const algorithm of await entries(layout.blobsDir)) {
    for (const shard of await entries(join(layout.blobsDir, algorithm))) {
      // One shard's files are stat'ed together: the walk is I/O-bound, and the thread pool overlaps them.
      const found = await Promise.all((await entries(join(layout.blobsDir, algorithm, shard))).map(async (hex): Promise<BlobEntry | undefined> => {
        const digest = tryParseDigest(`${algorithm}:${hex}`);
        if (!digest) return undefined;
        const path = layout.blobPath(digest);
        const info = await stat(path).catch(() => undefined);
        if (!info?.isFile()) return undefined;
        return { digest, path, size: info.size, atimeMs: info.atimeMs, mtimeMs: info.mtimeMs };
      }));
      for (const blob of found) if (blob) result.push(blob);
    }
  }
  return result;
}

/** Repository names under a layout's repositories directory (hosted, or one cache namespace). */
export async function listRepositoryNames(layout: StorageLayout): Promise<string[]> {
  const names: string[] = [];
  async function walk(dir: string, prefix: string): Promise<void> {
    const children = await entries(dir);
    if (prefix && children.some((c) => c === '_manifests' || c === '_layers')) names.push(prefix);
    for (const child of children) {
      if (child.startsWith('_') || child.startsWith('.')) continue;
      const info = await stat(join(dir, child)).catch(() => undefined);
      if (info?.isDirectory()) await walk(join(dir, child), prefix ? `${prefix}/${child}` : child);
    }
  }
  await walk(layout.repositoriesDir, '');
  return names.sort();
}

/** Layouts of every pull-through cache namespace under `<root>/cache/`. */
export async function listCacheLayouts(root: string): Promise<StorageLayout[]> {
  return (await entries(join(root, 'cache'))).filter((ns) => NAMESPACE_PATTERN.test(ns)).map((ns) => new StorageLayout(root, { namespace: ns }));
}

/** Digests named by the files of `<dir>/<alg>/<hex>` (layer links, manifest revisions). */
export async function listLinkedDigests(dir: string): Promise<Digest[]> {
  const digests: Digest[] = [];
  for (const algorithm of await entries(dir)) {
    for (const hex of await entries(join(dir, algorithm))) {
      const digest = tryParseDigest(`${algorithm}:${hex}`);
      if (digest) digests.push(digest);
    }
  }
  return digests;
}

/** Every digest the repositories of `layouts` link: their layers and manifest revisions. */
async function linkedDigests(layouts: StorageLayout[]): Promise<Set<string>> {
  const digests = new Set<string>();
  for (const layout of layouts) {
    for (const name of await listRepositoryNames(layout)) {
      for (const d of await listLinkedDigests(join(layout.repositoryDir(name), '_layers'))) digests.add(d.value);
      for (const d of await listLinkedDigests(join(layout.manifestsDir(name), 'revisions'))) digests.add(d.value);
    }
  }
  return digests;
}

/**
 * Digests the hosted (pushed or seeded) store holds. They have no upstream to be fetched from
 * again, so the cleaner never evicts them.
 */
export function hostedDigests(layout: StorageLayout): Promise<Set<string>> {
  return linkedDigests([layout]);
}

/** Digests any pull-through cache namespace links (its manifests and layers). */
export async function cachedDigests(root: string): Promise<Set<string>> {
  return linkedDigests(await listCacheLayouts(root));
}
