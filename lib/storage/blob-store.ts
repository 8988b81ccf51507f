import { open, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Digest, DigestAlgorithm } from '../oci/digest.js';
import { SMALL_BLOB_MAX } from '../http/file-response.js';
import { BoundedMap } from './bounded-map.js';
import { writeBatched } from './write-batched.js';
import { FreshReads } from './fresh-reads.js';
import { isStorageNotFound, readOpened, storageUnavailable, type BlobWriter, type StorageDriver } from './driver/driver.js';
import { FilesystemDriver } from './driver/filesystem.js';
import type { StorageLayout } from './layout.js';

/** How long a cached "this repository links that blob" fact is trusted before the store is asked again. */
const LINK_RECHECK_MS = 5_000;
/**
 * How long a blob's cached size (and, for small blobs, its bytes) is served without asking the store
 * whether it is still there. Content never changes under a digest; only garbage collection and cache
 * eviction (other processes) remove blobs, so this bounds how long a removed blob may still be served.
 */
const STAT_RECHECK_MS = 5_000;
/** Small blobs (SMALL_BLOB_MAX: configs, small layers) are kept in memory once read, up to this many bytes in all. */
const SMALL_BLOB_CACHE_BYTES = 8 * 1024 * 1024;

/** How a BlobStore caches links (mutable: a blob DELETE removes them). */
export interface LinkCaching {
  /** How long a link seen in the store is trusted: LINK_RECHECK_MS by default, 0 on a store other appliances write too. */
  linkRecheckMs: number;
}

export interface BlobInfo {
  size: number;
  mtimeMs: number;
}

function orUndefined<T>(err: unknown): T | undefined {
  if (isStorageNotFound(err)) return undefined;
  throw err;
}

/**
 * Content-addressed blobs shared by all repositories, and each repository's links to them, on a
 * storage driver. A blob key exists only once its bytes were verified against its digest
 * (driver.blobWriter commits after verification).
 */
export class BlobStore {
  private readonly linkCache = new BoundedMap<string, number>(100_000);
  private readonly statCache = new BoundedMap<string, { info: BlobInfo; checkedAt: number }>(20_000);
  /** Small blob bodies by digest. */
  private readonly smallBodies = new BoundedMap<string, Buffer>(10_000, { maxWeight: SMALL_BLOB_CACHE_BYTES, weigh: (b) => b.length });

  private readonly linkRecheckMs: number;
  /** Link checks in flight, shared by the requests that arrived before they began. */
  private readonly linkReads = new FreshReads<boolean>();

  constructor(readonly driver: StorageDriver, readonly layout: StorageLayout, caching: LinkCaching = { linkRecheckMs: LINK_RECHECK_MS }) {
    this.linkRecheckMs = caching.linkRecheckMs;
  }

  /** The blob's file when the store is a directory (the fast path for serving); undefined on S3. */
  filePath(digest: Digest): string | undefined {
    return this.driver instanceof FilesystemDriver ? this.driver.path(this.layout.blobKey(digest)) : undefined;
  }

  /** stat() for serving: a blob's size is remembered for STAT_RECHECK_MS (see there). */
  async statCached(digest: Digest): Promise<BlobInfo | undefined> {
    const cached = this.statCache.get(digest.value);
    if (cached !== undefined && Date.now() - cached.checkedAt < STAT_RECHECK_MS) return cached.info;
    const info = await this.stat(digest);
    if (info) this.statCache.set(digest.value, { info, checkedAt: Date.now() });
    else this.forget(digest);
    return info;
  }

  /**
   * Whether serving `digest` can start without reading the blob's size from the store: its size is
   * cached and fresh, or its bytes are in memory (for those a stat to confirm it is still stored is
   * cheaper than reading them again). Otherwise openWhole() reads size and bytes in one request.
   */
  hasCached(digest: Digest): boolean {
    const cached = this.statCache.get(digest.value);
    return (cached !== undefined && Date.now() - cached.checkedAt < STAT_RECHECK_MS) || this.smallBodies.has(digest.value);
  }

  /**
   * The whole blob as a stream with its size, from ONE store request (S3: a GetObject, its
   * Content-Length) instead of a stat and then a read; the size is remembered as statCached()
   * remembers it. Undefined when the blob is not stored.
   */
  async openWhole(digest: Digest): Promise<{ stream: Readable; size: number } | undefined> {
    const opened = await this.driver.open(this.layout.blobKey(digest)).catch(orUndefined<never>);
    if (!opened) {
      this.forget(digest);
      return undefined;
    }
    this.statCache.set(digest.value, { info: { size: opened.size, mtimeMs: opened.modifiedAt.getTime() }, checkedAt: Date.now() });
    return { stream: opened.stream, size: opened.size };
  }

  /**
   * Reads a small blob's stream from openWhole() into memory and keeps the bytes, as readSmallCached()
   * does. A read that fails or does not give exactly `size` bytes is the store failing: UNAVAILABLE.
   */
  async keepSmall(digest: Digest, stream: Readable, size: number): Promise<Buffer> {
    const data = await readOpened(stream, size).catch((err: unknown) => {
      throw storageUnavailable(this.driver.kind, err);
    });
    if (!data) {
      this.forget(digest);
      throw storageUnavailable(this.driver.kind, new Error(`the store's answer for ${digest.value} was not the ${size} bytes it announced`));
    }
    if (size <= SMALL_BLOB_MAX) this.smallBodies.set(digest.value, data);
    return data;
  }

  /** Drops what is cached about a blob (it was found missing in the store). */
  forget(digest: Digest): void {
    this.statCache.delete(digest.value);
    this.smallBodies.delete(digest.value);
  }

  /**
   * The bytes of a small blob whose size `statCached` just confirmed, from memory when possible:
   * after the first read, serving it needs no storage request at all.
   */
  async readSmallCached(digest: Digest, size: number): Promise<Buffer | undefined> {
    const cached = this.smallBodies.get(digest.value);
    if (cached !== undefined && cached.length === size) return cached;
    const data = await this.readSmall(digest);
    if (!data) {
      this.forget(digest);
      return undefined;
    }
    if (data.length <= SMALL_BLOB_MAX) this.smallBodies.set(digest.value, data);
    return data;
  }

  async stat(digest: Digest): Promise<BlobInfo | undefined> {
    const info = await this.driver.stat(this.layout.blobKey(digest)).catch(orUndefined<never>);
    return info && { size: info.size, mtimeMs: info.modifiedAt.getTime() };
  }

  /** Whether `name` may serve `digest` (it was pushed to or mounted into that repository). */
  async isLinked(name: string, digest: Digest): Promise<boolean> {
    const cacheKey = `${name}\0${digest.value}`;
    const checkedAt = this.linkCache.get(cacheKey);
    if (checkedAt !== undefined && Date.now() - checkedAt < this.linkRecheckMs) return true;
    return this.linkReads.read(cacheKey, async () => {
      const linked = await this.driver.stat(this.layout.layerLinkKey(name, digest)).then(() => true, (err) => orUndefined<boolean>(err) ?? false);
      if (linked) this.linkCache.set(cacheKey, Date.now());
      else this.linkCache.delete(cacheKey);
      return linked;
    });
  }

  /** Links the blob into `name`: an empty key is the whole link; writing it twice is harmless. */
  async link(name: string, digest: Digest): Promise<void> {
    await this.driver.putContent(this.layout.layerLinkKey(name, digest), '');
    this.linkCache.set(`${name}\0${digest.value}`, Date.now());
  }

  /** Removes the repository's link; the bytes stay until garbage collection finds them unreferenced. */
  async unlink(name: string, digest: Digest): Promise<boolean> {
    this.linkCache.delete(`${name}\0${digest.value}`);
    const key = this.layout.layerLinkKey(name, digest);
    const existed = await this.driver.stat(key).then(() => true, (err) => orUndefined<boolean>(err) ?? false);
    if (existed) await this.driver.delete(key);
    return existed;
  }

  /** Streams bytes `start..end` (inclusive) of a blob; undefined when it is not stored. */
  async open(digest: Digest, start = 0, end?: number): Promise<Readable | undefined> {
    const range = end === undefined ? { offset: start } : { offset: start, length: end - start + 1 };
    const stream = await this.driver.reader(this.layout.blobKey(digest), range).catch(orUndefined<never>);
    if (!stream) this.forget(digest);
    return stream;
  }

  /** The blob's open file (filesystem fast path); undefined when not stored or the store is not a directory. */
  async openHandle(digest: Digest): Promise<FileHandle | undefined> {
    const path = this.filePath(digest);
    if (path === undefined) return undefined;
    try {
      return await open(path, 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw err;
    }
  }

  async readSmall(digest: Digest): Promise<Buffer | undefined> {
    return this.driver.getContent(this.layout.blobKey(digest)).catch(orUndefined<never>);
  }

  /** A writer that makes the blob visible only once `commit(digest)` verified what was written. */
  async writer(digest: Digest): Promise<BlobWriter> {
    return this.driver.blobWriter(this.layout.blobKey(digest), digest.algorithm);
  }

  /**
   * Streams `source` into the store while hashing it; the blob becomes visible only after the
   * digest (and size, if given) checked out. Monolithic uploads, air-gap seeds.
   */
  async writeVerified(source: AsyncIterable<Buffer>, expected: Digest, expectedSize?: number): Promise<number> {
    const writer = await this.writer(expected);
    try {
      await writeBatched(writer, source);
      await writer.commit(expected, expectedSize);
    } catch (err) {
      await writer.cancel();
      throw err;
    }
    this.forget(expected);
    return writer.size;
  }

  /** The digests linked into a repository (for mark-and-sweep and tests). */
  async listLinks(name: string, algorithm: DigestAlgorithm): Promise<string[]> {
    const prefix = this.layout.layerLinksPrefix(name, algorithm);
    const digests: string[] = [];
    for await (const info of this.driver.walk(prefix)) digests.push(`${algorithm}:${info.key.slice(prefix.length)}`);
    return digests.sort();
  }
}
