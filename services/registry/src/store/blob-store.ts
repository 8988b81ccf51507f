import { createReadStream, createWriteStream, type ReadStream } from 'node:fs';
import { mkdir, open, readdir, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import { createDigester, type Digest, type DigestAlgorithm } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { commitFile, tempPath } from '../../../../lib/storage/atomic.js';
import type { StorageLayout } from '../../../../lib/storage/layout.js';
import { BoundedMap } from '../../../../lib/storage/bounded-map.js';
import { SMALL_BLOB_MAX } from '../../../../lib/http/file-response.js';

/** How long a cached "this repository links that blob" fact is trusted before disk is asked again. */
const LINK_RECHECK_MS = 5_000;
/** Read chunk size for serving blobs: large chunks keep per-chunk work (and syscalls) low. */
export const BLOB_READ_CHUNK = 1024 * 1024;
/**
 * How long a blob's cached size (and, for small blobs, its bytes) is served without asking disk
 * whether the file is still there. Content never changes under a digest; only garbage collection
 * and cache eviction (other processes) remove blobs, so this bounds how long a removed blob may
 * still be served, as LINK_RECHECK_MS does for links.
 */
const STAT_RECHECK_MS = 5_000;
/** Small blobs (SMALL_BLOB_MAX: configs, small layers) are kept in memory once read, up to this many bytes in all. */
const SMALL_BLOB_CACHE_BYTES = 8 * 1024 * 1024;

/**
 * Bytes a blob file's write stream buffers before it pushes back on the socket: with room for
 * several received chunks, each write(v) call takes many of them at once (fewer syscalls and
 * thread-pool round trips than one 64 KiB write per chunk).
 */
export const WRITE_BUFFER = 1024 * 1024;

export interface BlobInfo {
  size: number;
  mtimeMs: number;
}

/**
 * Content-addressed blobs shared by all repositories, and each repository's links to them. A blob
 * file exists only once its bytes were verified against its digest.
 */
export class BlobStore {
  private readonly linkCache = new BoundedMap<string, number>(100_000);
  private readonly statCache = new BoundedMap<string, { info: BlobInfo; checkedAt: number }>(20_000);
  /** Small blob bodies by digest. */
  private readonly smallBodies = new BoundedMap<string, Buffer>(10_000, { maxWeight: SMALL_BLOB_CACHE_BYTES, weigh: (b) => b.length });

  constructor(readonly layout: StorageLayout) {}

  /** stat() for serving: a blob's size is remembered for STAT_RECHECK_MS (see there). */
  async statCached(digest: Digest): Promise<BlobInfo | undefined> {
    const cached = this.statCache.get(digest.value);
    if (cached !== undefined && Date.now() - cached.checkedAt < STAT_RECHECK_MS) return cached.info;
    const info = await this.stat(digest);
    if (info) this.statCache.set(digest.value, { info, checkedAt: Date.now() });
    else this.forget(digest);
    return info;
  }

  /** Drops what is cached about a blob (it was found missing on disk). */
  forget(digest: Digest): void {
    this.statCache.delete(digest.value);
    this.smallBodies.delete(digest.value);
  }

  /**
   * The bytes of a small blob whose size `statCached` just confirmed, from memory when possible:
   * after the first read, serving it needs no file system call at all.
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
    try {
      const info = await stat(this.layout.blobPath(digest));
      return { size: info.size, mtimeMs: info.mtimeMs };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Whether `name` may serve `digest` (it was pushed to or mounted into that repository). */
  async isLinked(name: string, digest: Digest): Promise<boolean> {
    const key = `${name}\0${digest.value}`;
    const checkedAt = this.linkCache.get(key);
    if (checkedAt !== undefined && Date.now() - checkedAt < LINK_RECHECK_MS) return true;
    try {
      await stat(this.layout.layerLinkPath(name, digest));
      this.linkCache.set(key, Date.now());
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.linkCache.delete(key);
        return false;
      }
      throw err;
    }
  }

  async link(name: string, digest: Digest): Promise<void> {
    const path = this.layout.layerLinkPath(name, digest);
    // An empty file is the whole link; creating it twice is harmless, so no temp file is needed.
    await open(path, 'a').catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      await mkdir(dirname(path), { recursive: true });
      return open(path, 'a');
    }).then((handle) => handle.close());
    this.linkCache.set(`${name}\0${digest.value}`, Date.now());
  }

  /** Removes the repository's link; the bytes stay until garbage collection finds them unreferenced. */
  async unlink(name: string, digest: Digest): Promise<boolean> {
    this.linkCache.delete(`${name}\0${digest.value}`);
    try {
      await unlink(this.layout.layerLinkPath(name, digest));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  /** Opens a blob for streaming `start..end` (inclusive); undefined when it is not stored. */
  async open(digest: Digest, start?: number, end?: number): Promise<ReadStream | undefined> {
    const path = this.layout.blobPath(digest);
    try {
      const handle = await open(path, 'r');
      // The stream owns the FileHandle and closes it when done or destroyed.
      return createReadStream('', { fd: handle, start, end, highWaterMark: BLOB_READ_CHUNK, autoClose: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  /** Opens a blob file for reading; undefined when it is not stored. The caller closes the handle. */
  async openHandle(digest: Digest): Promise<FileHandle | undefined> {
    try {
      return await open(this.layout.blobPath(digest), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw err;
    }
  }

  async readSmall(digest: Digest): Promise<Buffer | undefined> {
    const handle = await open(this.layout.blobPath(digest), 'r').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!handle) return undefined;
    try {
      return await handle.readFile();
    } finally {
      await handle.close();
    }
  }

  /**
   * Streams `source` into a temp file while hashing it, verifies the digest and only then renames
   * the file into place. Used for monolithic uploads and (later) cache fills.
   */
  async writeVerified(source: Readable, expected: Digest, expectedSize?: number): Promise<number> {
    const temp = tempPath(this.layout.tmpDir);
    await mkdir(this.layout.tmpDir, { recursive: true });
    const hash = createDigester(expected.algorithm);
    let size = 0;
    try {
      // The stream owns its descriptor: it fsyncs (flush) and closes it before the pipeline resolves.
      // (A FileHandle lent to a stream with autoClose: false stays referenced: handle.close() never resolved.)
      await pipeline(
        source,
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            hash.update(chunk);
            size += chunk.length;
            yield chunk;
          }
        },
        createWriteStream(temp, { mode: 0o644, flush: true, highWaterMark: WRITE_BUFFER }),
      );
      if (expectedSize !== undefined && size !== expectedSize) {
        throw new RegistryError('SIZE_INVALID', { expected: expectedSize, received: size });
      }
      const actual = `${expected.algorithm}:${hash.digest('hex')}`;
      if (actual !== expected.value) {
        throw new RegistryError('DIGEST_INVALID', { expected: expected.value, actual });
      }
    } catch (err) {
      await unlink(temp).catch(() => {});
      throw err;
    }
    await this.commitVerified(temp, expected);
    return size;
  }

  /** Moves a verified, fsynced file into the content store; if the blob exists already, drops it. */
  async commitVerified(verifiedPath: string, digest: Digest): Promise<void> {
    const destination = this.layout.blobPath(digest);
    if (await this.stat(digest)) {
      await rm(verifiedPath, { force: true });
      return;
    }
    await commitFile(verifiedPath, destination);
  }

  /** Hashes a stored file from disk (uploads resumed after a restart, sha512 finishes). */
  static async hashFile(path: string, algorithm: DigestAlgorithm, length: number): Promise<string> {
    const hash = createDigester(algorithm);
    if (length > 0) {
      await pipeline(createReadStream(path, { start: 0, end: length - 1, highWaterMark: BLOB_READ_CHUNK }), async (chunks: AsyncIterable<Buffer>) => {
        for await (const chunk of chunks) hash.update(chunk);
      });
    }
    return `${algorithm}:${hash.digest('hex')}`;
  }

  /** Lists the digests linked into a repository (for mark-and-sweep and tests). */
  async listLinks(name: string, algorithm: DigestAlgorithm): Promise<string[]> {
    try {
      return (await readdir(this.layout.layerLinksDir(name, algorithm))).map((hex) => `${algorithm}:${hex}`);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
  }
}
