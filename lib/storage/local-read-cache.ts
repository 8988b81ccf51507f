import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, stat, unlink, utimes } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { createDigester, type Digest } from '../oci/digest.js';
import { tempPath } from './atomic.js';

/** Hits refresh a file's mtime (its place in the LRU order) at most this often. */
const TOUCH_EVERY_MS = 60_000;

export interface LocalReadCacheOptions {
  /** Local directory (STEVEDORE_LOCAL_CACHE_DIR); several processes may share it. */
  dir: string;
  /** Bytes kept at most (STEVEDORE_LOCAL_CACHE_MAXSIZE); the least recently used files go first. */
  maxBytes: number;
}

/**
 * A bounded copy of hot blobs on the appliance's own disk, in front of a remote store (S3), so a hot
 * layer is served at disk speed instead of from the bucket. The store stays the truth: a file enters
 * the cache only after its bytes hashed to its digest while they were streamed to a client, so the
 * cache never serves anything the store did not verify. The LRU order is the files' mtime (this is
 * local disk, where times can be set); processes sharing the directory each evict down to the bound.
 */
export class LocalReadCache {
  readonly dir: string;
  readonly maxBytes: number;
  private readonly tmpDir: string;
  /** Bytes in the cache as this process last counted them (re-counted by every eviction scan). */
  private usedBytes = 0;
  private readonly touchedAt = new Map<string, number>();
  private readonly filling = new Set<string>();
  private evicting: Promise<void> | undefined;

  constructor(options: LocalReadCacheOptions) {
    this.dir = options.dir;
    this.maxBytes = options.maxBytes;
    this.tmpDir = join(options.dir, '.tmp');
  }

  /** Creates the directory and counts what is in it (left-overs of a previous run stay usable). */
  async open(): Promise<this> {
    await mkdir(this.tmpDir, { recursive: true });
    await this.evict();
    return this;
  }

  private pathOf(digest: Digest): string {
    return join(this.dir, `${digest.algorithm}-${digest.hex}`);
  }

  /** The local file of `digest` with its size, or undefined on a miss. A hit moves it to the front. */
  async lookup(digest: Digest): Promise<{ path: string; size: number } | undefined> {
    const path = this.pathOf(digest);
    const info = await stat(path).catch(() => undefined);
    if (!info) return undefined;
    const now = Date.now();
    if (now - (this.touchedAt.get(digest.value) ?? 0) > TOUCH_EVERY_MS) {
      this.touchedAt.set(digest.value, now);
      await utimes(path, new Date(now), new Date(now)).catch(() => {});
    }
    return { path, size: info.size };
  }

  /**
   * Passes `source` (the whole blob, read from the store) through to the caller and keeps a copy:
   * the copy is renamed into the cache only if the stream ended with exactly `size` bytes hashing to
   * `digest`. A client that leaves early, a short read or a mismatch leave nothing. Blobs larger than
   * a quarter of the cache are not kept (they would push out everything else).
   */
  tee(digest: Digest, size: number, source: Readable): Readable {
    if (size > this.maxBytes / 4 || this.filling.has(digest.value)) return source;
    this.filling.add(digest.value);
    const temp = tempPath(this.tmpDir);
    const file = createWriteStream(temp, { mode: 0o644 });
    const hash = createDigester(digest.algorithm);
    let received = 0;
    let failed = false;
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    source.on('data', (chunk: Buffer) => {
      received += chunk.length;
      hash.update(chunk);
      // The client sets the pace; local disk outruns the store, so the file's buffer stays small.
      if (!failed) file.write(chunk);
      if (!out.write(chunk)) source.pause();
    });
    out.on('drain', () => source.resume());
    file.on('error', () => {
      failed = true;
    });
    const finish = async (complete: boolean) => {
      await new Promise<void>((resolve) => file.end(resolve));
      const ok = complete && !failed && received === size && `${digest.algorithm}:${hash.digest('hex')}` === digest.value;
      if (ok) {
        await rename(temp, this.pathOf(digest)).catch(() => unlink(temp).catch(() => {}));
        this.usedBytes += size;
        if (this.usedBytes > this.maxBytes) void this.evict();
      } else {
        await unlink(temp).catch(() => {});
      }
      this.filling.delete(digest.value);
    };
    source.once('end', () => {
      out.end();
      void finish(true);
    });
    source.once('error', (err) => {
      out.destroy(err);
      void finish(false);
    });
    out.once('close', () => {
      // The client went away before the end: stop reading the store.
      if (!source.readableEnded) {
        source.destroy();
        void finish(false);
      }
    });
    return out;
  }

  /** Removes the least recently used files until the directory holds at most maxBytes. */
  evict(): Promise<void> {
    this.evicting ??= this.scanAndEvict().finally(() => {
      this.evicting = undefined;
    });
    return this.evicting;
  }

  private async scanAndEvict(): Promise<void> {
    const files: Array<{ path: string; size: number; mtimeMs: number }> = [];
    for (const name of await readdir(this.dir).catch(() => [] as string[])) {
      if (name.startsWith('.')) continue;
      const path = join(this.dir, name);
      const info = await stat(path).catch(() => undefined);
      if (info?.isFile()) files.push({ path, size: info.size, mtimeMs: info.mtimeMs });
    }
    let used = files.reduce((sum, f) => sum + f.size, 0);
    files.sort((a, b) => a.mtimeMs - b.mtimeMs);
    for (const file of files) {
      if (used <= this.maxBytes) break;
      // A reader that has the file open keeps reading it: unlink only drops the name.
      await unlink(file.path).catch(() => {});
      used -= file.size;
    }
    this.usedBytes = used;
  }
}
