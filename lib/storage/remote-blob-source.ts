import { open, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.js';
import type { StorageDriver } from './driver/driver.js';
import { LocalReadCache } from './local-read-cache.js';

/** Where the bytes of one blob GET come from, on a store that is not a local directory (S3). */
export type RemoteBlobBody =
  /** The blob's verified copy on local disk (the read cache): bytes start..end of the open file. */
  | { kind: 'file'; handle: FileHandle; start: number; end: number }
  /** The store's ranged read, streamed (through the read cache's tee for a whole-blob read). */
  | { kind: 'stream'; stream: Readable };

export interface RemoteBlobSettings {
  /** STEVEDORE_S3_REDIRECT: answer GETs with a redirect valid this long (ms); undefined: serve the bytes. */
  redirectTtlMs: number | undefined;
  /** STEVEDORE_LOCAL_CACHE_DIR / _MAXSIZE: hot blobs on local disk; undefined: none. */
  localCache: LocalReadCache | undefined;
}

/** The settings of a config with BLOB_SERVING_OPTIONS (lib/config.ts), the read cache opened. */
export async function openRemoteBlobSettings(config: { s3Redirect: boolean; s3RedirectTtl: number; localCacheDir: string | undefined; localCacheMaxSize: number }): Promise<RemoteBlobSettings> {
  return {
    redirectTtlMs: config.s3Redirect ? config.s3RedirectTtl : undefined,
    localCache: config.localCacheDir === undefined ? undefined
      : await new LocalReadCache({ dir: config.localCacheDir, maxBytes: config.localCacheMaxSize }).open(),
  };
}

/**
 * How the worker and the gateway serve a blob's bytes from a remote store, one decision for both
 * (routes/blobs.ts, gateway blob-direct.ts): a redirect when configured (redirectURL); else the local
 * read cache's copy when it has one; else the store's read, kept by the read cache on the way when it
 * is the whole blob. The caller has checked the repository's link and the blob's size first.
 */
export class RemoteBlobSource {
  constructor(private readonly driver: StorageDriver, private readonly settings: RemoteBlobSettings) {}

  get redirects(): boolean {
    return this.settings.redirectTtlMs !== undefined;
  }

  /**
   * Where to send a client for a GET of `key` (STEVEDORE_S3_REDIRECT), or undefined to serve it.
   * Only blobs over `smallMax` are redirected: a small one costs less from memory than the client's
   * second request.
   */
  async redirectURL(key: string, size: number, smallMax: number): Promise<string | undefined> {
    if (this.settings.redirectTtlMs === undefined || size <= smallMax) return undefined;
    return this.driver.redirectURL(key, this.settings.redirectTtlMs / 1000);
  }

  /**
   * Whether a GET of a whole blob may be served from one store read that brings the size with the
   * bytes (StorageDriver.open) instead of a stat and then body(): not when redirecting (the size
   * decides whether to), nor when the local read cache holds the blob (served from disk once a stat
   * confirmed the store still has it).
   */
  async readsWhole(digest: Digest): Promise<boolean> {
    if (this.redirects) return false;
    const cache = this.settings.localCache;
    return cache === undefined || (await cache.lookup(digest)) === undefined;
  }

  /** A whole blob's stream from StorageDriver.open, kept by the local read cache on the way (as body() keeps whole reads). */
  keepWhole(digest: Digest, size: number, stream: Readable): Readable {
    const cache = this.settings.localCache;
    return cache ? cache.tee(digest, size, stream) : stream;
  }

  async body(key: string, digest: Digest, size: number, start: number, end: number): Promise<RemoteBlobBody> {
    const cache = this.settings.localCache;
    if (cache) {
      const hit = await cache.lookup(digest);
      if (hit && hit.size === size) {
        const handle = await open(hit.path, 'r').catch(() => undefined);
        if (handle) return { kind: 'file', handle, start, end };
      }
    }
    const whole = start === 0 && end === size - 1;
    const stream = await this.driver.reader(key, whole ? {} : { offset: start, length: end - start + 1 });
    return { kind: 'stream', stream: whole ? this.keepWhole(digest, size, stream) : stream };
  }
}
