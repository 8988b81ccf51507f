import { createHash, randomUUID, type Hash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { link, mkdir, open, readdir, readFile, rm, rmdir, stat, unlink, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, relative, sep } from 'node:path';
import { Readable } from 'node:stream';
import type { Digest, DigestAlgorithm } from '../../oci/digest.js';
import { commitFile, openTempFile, writeFileAtomic, writeTempFile } from '../atomic.js';
import { SyncBehind } from '../sync-behind.js';
import {
  checkKey, checkPrefix, StorageNotFoundError,
  type BlobWriter, type IncompleteWrite, type KeyInfo, type ListOptions, type ListPage, type OpenedKey, type StorageDriver,
  type UploadSessions, type VersionedContent,
} from './driver.js';
import { FilesystemUploads } from './filesystem-uploads.js';
import { verifyContent } from './verify.js';

const MISSING = new Set(['ENOENT', 'ENOTDIR', 'EISDIR']);

function isMissing(err: unknown): boolean {
  return MISSING.has((err as NodeJS.ErrnoException).code ?? '');
}

/** Who holds a lock this process takes: `<host> <pid>`. */
const LOCK_OWNER = `${hostname()} ${process.pid}`;

/** Whether a lock's owner is a process of this host that no longer runs. */
function isDeadLocalOwner(owner: string): boolean {
  const [host, pid] = owner.split(' ');
  if (host !== hostname() || !pid || !/^\d+$/.test(pid)) return false;
  try {
    process.kill(Number(pid), 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

function md5(data: Buffer): string {
  return createHash('md5').update(data).digest('hex');
}

export interface FilesystemDriverOptions {
  /** Temp files of atomic writes: must be on the same filesystem as `root`. Default `<root>/_tmp/_storage`. */
  tmpDir?: string;
}

/** Keys deleteMany removes at once. */
const DELETE_CONCURRENCY = 16;

/**
 * The storage driver over a directory: a key is the file `<root>/<key>`, so layout keys give today's
 * on-disk layout byte for byte. Writes go to a temp file in `tmpDir`, are fsynced and renamed (or
 * hard-linked, for a conditional create) into place.
 */
export class FilesystemDriver implements StorageDriver {
  readonly kind = 'filesystem';
  readonly location: string;
  readonly root: string;
  readonly tmpDir: string;
  readonly uploads: UploadSessions;
  /** The temp dir's key prefix when it lies inside root: hidden from listings, like S3's in-progress writes. */
  private readonly hiddenPrefix: string | undefined;
  private readonly locksDir: string;

  constructor(root: string, options: FilesystemDriverOptions = {}) {
    this.root = root;
    this.location = root;
    this.tmpDir = options.tmpDir ?? join(root, '_tmp', '_storage');
    this.locksDir = join(this.tmpDir, '.locks');
    const rel = relative(root, this.tmpDir);
    this.hiddenPrefix = rel.startsWith('..') ? undefined : `${rel.split(sep)[0]}/`;
    this.uploads = new FilesystemUploads(this);
  }

  path(key: string): string {
    return join(this.root, checkKey(key));
  }

  /** A directory has no URL of its own: blobs are always served by the registry. */
  async redirectURL(): Promise<undefined> {
    return undefined;
  }

  async getContent(key: string): Promise<Buffer> {
    try {
      return await readFile(this.path(key));
    } catch (err) {
      if (isMissing(err)) throw new StorageNotFoundError(key);
      throw err;
    }
  }

  async getVersioned(key: string): Promise<VersionedContent> {
    let handle: FileHandle | undefined;
    try {
      handle = await open(this.path(key), 'r');
      const [data, info] = await Promise.all([handle.readFile(), handle.stat()]);
      return { data, version: md5(data), modifiedAt: info.mtime };
    } catch (err) {
      if (isMissing(err)) throw new StorageNotFoundError(key);
      throw err;
    } finally {
      await handle?.close();
    }
  }

  async putContent(key: string, data: Buffer | string): Promise<void> {
    // An empty key (a blob link) has no content to tear: created in place, without a temp file and
    // its fsync, as links always were.
    if (data.length === 0) return this.createEmpty(this.path(key));
    await writeFileAtomic(this.tmpDir, this.path(key), data);
  }

  private async createEmpty(path: string): Promise<void> {
    const handle = await open(path, 'w', 0o644).catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
      await mkdir(dirname(path), { recursive: true });
      return open(path, 'w', 0o644);
    });
    await handle.close();
  }

  async putIfAbsent(key: string, data: Buffer | string): Promise<boolean> {
    const destination = this.path(key);
    const temp = await writeTempFile(this.tmpDir, data);
    try {
      // link(2) fails with EEXIST if the destination exists: an atomic create-if-absent of complete content.
      await link(temp, destination).catch(async (err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
        await mkdir(dirname(destination), { recursive: true });
        await link(temp, destination);
      });
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw err;
    } finally {
      await unlink(temp).catch(() => {});
    }
  }

  async replaceIfMatch(key: string, data: Buffer | string, version: string): Promise<string | undefined> {
    const content = typeof data === 'string' ? Buffer.from(data) : data;
    return this.withLock(`key-${md5(Buffer.from(key))}`, async () => {
      const current = await this.getVersioned(key).catch((err) => {
        if (err instanceof StorageNotFoundError) return undefined;
        throw err;
      });
      if (current?.version !== version) return undefined;
      await this.putContent(key, content);
      return md5(content);
    });
  }

  async reader(key: string, range: { offset?: number; length?: number } = {}): Promise<Readable> {
    const offset = range.offset ?? 0;
    let handle: FileHandle;
    try {
      handle = await open(this.path(key), 'r');
      if (!(await handle.stat()).isFile()) {
        await handle.close();
        throw new StorageNotFoundError(key);
      }
    } catch (err) {
      if (isMissing(err)) throw new StorageNotFoundError(key);
      throw err;
    }
    if (range.length === 0) {
      await handle.close();
      return Readable.from([]);
    }
    const end = range.length === undefined ? undefined : offset + range.length - 1;
    return handle.createReadStream({ start: offset, ...(end === undefined ? {} : { end }), autoClose: true });
  }

  async open(key: string): Promise<OpenedKey> {
    let handle: FileHandle;
    try {
      handle = await open(this.path(key), 'r');
    } catch (err) {
      if (isMissing(err)) throw new StorageNotFoundError(key);
      throw err;
    }
    const info = await handle.stat().catch(async (err: unknown) => {
      await handle.close();
      throw err;
    });
    if (!info.isFile()) {
      await handle.close();
      throw new StorageNotFoundError(key);
    }
    if (info.size === 0) {
      await handle.close();
      return { stream: Readable.from([]), size: 0, modifiedAt: info.mtime };
    }
    // The size read here bounds the stream: a file replaced meanwhile cannot give more bytes than announced.
    return { stream: handle.createReadStream({ start: 0, end: info.size - 1, autoClose: true }), size: info.size, modifiedAt: info.mtime };
  }

  async stat(key: string): Promise<KeyInfo> {
    try {
      const info = await stat(this.path(key));
      if (!info.isFile()) throw new StorageNotFoundError(key);
      return { key, size: info.size, modifiedAt: info.mtime };
    } catch (err) {
      if (isMissing(err)) throw new StorageNotFoundError(key);
      throw err;
    }
  }

  async list(prefix: string, options: ListOptions = {}): Promise<ListPage> {
    checkPrefix(prefix);
    const limit = options.limit ?? 1000;
    const after = [options.startAfter, options.cursor].filter((v): v is string => v !== undefined).sort().pop();
    const slash = prefix.lastIndexOf('/');
    const dirKey = prefix.slice(0, slash + 1);
    const namePrefix = prefix.slice(slash + 1);
    // Candidates in key order: for a delimiter listing, one directory's entries; otherwise every file below.
    const entries: Array<{ key: string; isPrefix: boolean }> = [];
    if (options.delimiter) {
      for (const entry of await this.readDir(dirKey)) {
        if (!entry.name.startsWith(namePrefix)) continue;
        const key = dirKey + entry.name;
        if (entry.isDirectory()) entries.push({ key: `${key}/`, isPrefix: true });
        else if (entry.isFile()) entries.push({ key, isPrefix: false });
      }
    } else {
      for await (const key of this.walkKeys(dirKey)) if (key.startsWith(prefix)) entries.push({ key, isPrefix: false });
    }
    const visible = entries
      .filter((e) => !this.isHidden(e.key) && (after === undefined || e.key > after))
      .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    const page = visible.slice(0, limit);
    const keys: KeyInfo[] = [];
    const prefixes: string[] = [];
    for (const entry of page) {
      if (entry.isPrefix) prefixes.push(entry.key);
      else {
        // A file removed since the readdir is simply not listed.
        const info = await this.stat(entry.key).catch((err) => (err instanceof StorageNotFoundError ? undefined : Promise.reject(err)));
        if (info) keys.push(info);
      }
    }
    return { keys, prefixes, next: visible.length > limit ? page[page.length - 1]!.key : undefined };
  }

  async *walk(prefix: string): AsyncIterable<KeyInfo> {
    checkPrefix(prefix);
    const dirKey = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    for await (const key of this.walkKeys(dirKey)) {
      if (!key.startsWith(prefix) || this.isHidden(key)) continue;
      const info = await this.stat(key).catch((err) => (err instanceof StorageNotFoundError ? undefined : Promise.reject(err)));
      if (info) yield info;
    }
  }

  async delete(key: string): Promise<void> {
    const path = this.path(key);
    try {
      await unlink(path);
    } catch (err) {
      if (isMissing(err)) return;
      throw err;
    }
    await this.pruneEmptyDirs(dirname(path));
  }

  async deleteMany(keys: readonly string[]): Promise<void> {
    // A few at a time: each is an unlink and a walk up its empty directories.
    for (let i = 0; i < keys.length; i += DELETE_CONCURRENCY) {
      await Promise.all(keys.slice(i, i + DELETE_CONCURRENCY).map((key) => this.delete(key)));
    }
  }

  async deletePrefix(prefix: string): Promise<number> {
    if (!prefix.endsWith('/') || prefix === '/') throw new Error(`deletePrefix needs a prefix ending with "/": "${prefix}"`);
    checkPrefix(prefix);
    let removed = 0;
    for await (const _ of this.walkKeys(prefix)) removed++;
    const dir = join(this.root, prefix);
    await rm(dir, { recursive: true, force: true });
    await this.pruneEmptyDirs(dirname(dir));
    return removed;
  }

  async blobWriter(key: string, algorithm: DigestAlgorithm = 'sha256'): Promise<BlobWriter> {
    const destination = this.path(key);
    const temp = join(this.tmpDir, `blob-${Date.now()}-${randomUUID()}`);
    const handle = await this.openTemp(temp);
    return new FilesystemBlobWriter(handle, temp, destination, createHash(algorithm));
  }

  async *listIncompleteWrites(): AsyncIterable<IncompleteWrite> {
    let entries: Dirent[];
    try {
      entries = await readdir(this.tmpDir, { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return;
      throw err;
    }
    for (const entry of entries) {
      if (!entry.isFile() || entry.name.startsWith('.')) continue;
      const path = join(this.tmpDir, entry.name);
      const info = await stat(path).catch(() => undefined);
      if (info) yield { id: path, key: undefined, startedAt: info.mtime };
    }
  }

  async abortIncompleteWrite(write: IncompleteWrite): Promise<void> {
    if (dirname(write.id) !== this.tmpDir) throw new Error(`not a temp file of this store: ${write.id}`);
    await unlink(write.id).catch((err) => (isMissing(err) ? undefined : Promise.reject(err)));
  }

  // --- helpers shared with the upload sessions ---

  async openTemp(path: string): Promise<FileHandle> {
    return openTempFile(path);
  }

  /**
   * Runs `fn` holding a lock file (create-exclusive) shared by every process on this store. The file
   * names its holder (`host pid`): a lock of a process of this host that is gone (killed mid-append)
   * is taken over at once; any other lock once it is older than 30 s (operations under it take
   * milliseconds, an append as long as its chunk streams).
   */
  async withLock<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const path = join(this.locksDir, name);
    const deadline = Date.now() + 10_000;
    for (;;) {
      try {
        const handle = await open(path, 'wx');
        await handle.writeFile(LOCK_OWNER).finally(() => handle.close());
        break;
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') {
          await mkdir(this.locksDir, { recursive: true });
          continue;
        }
        if (code !== 'EEXIST') throw err;
        const info = await stat(path).catch(() => undefined);
        const owner = await readFile(path, 'utf8').catch(() => '');
        if ((info && Date.now() - info.mtimeMs > 30_000) || isDeadLocalOwner(owner)) await unlink(path).catch(() => {});
        if (Date.now() > deadline) throw new Error(`timed out waiting for storage lock ${name}`);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    }
    try {
      return await fn();
    } finally {
      await unlink(path).catch(() => {});
    }
  }

  private isHidden(key: string): boolean {
    return this.hiddenPrefix !== undefined && (key === this.hiddenPrefix || key.startsWith(this.hiddenPrefix));
  }

  private async readDir(dirKey: string): Promise<Dirent[]> {
    try {
      return await readdir(join(this.root, dirKey), { withFileTypes: true });
    } catch (err) {
      if (isMissing(err)) return [];
      throw err;
    }
  }

  /** Keys of every file below the directory `dirKey` ('' or ending with '/'), depth first. */
  private async *walkKeys(dirKey: string): AsyncIterable<string> {
    for (const entry of await this.readDir(dirKey)) {
      const key = dirKey + entry.name;
      if (entry.isDirectory()) {
        if (!this.isHidden(`${key}/`)) yield* this.walkKeys(`${key}/`);
      } else if (entry.isFile()) yield key;
    }
  }

  /** Removes directories left empty by a delete, up to the root (a concurrent writer re-creates them). */
  private async pruneEmptyDirs(dir: string): Promise<void> {
    while (dir.startsWith(this.root + sep) && dir !== this.root) {
      try {
        await rmdir(dir);
      } catch {
        return;
      }
      dir = dirname(dir);
    }
  }
}

class FilesystemBlobWriter implements BlobWriter {
  size = 0;
  private done = false;
  private readonly syncBehind: SyncBehind;

  constructor(
    private readonly handle: FileHandle,
    private readonly temp: string,
    private readonly destination: string,
    private readonly hash: Hash,
  ) {
    this.syncBehind = new SyncBehind(handle);
  }

  async write(chunk: Buffer): Promise<void> {
    await this.writev([chunk]);
  }

  async writev(chunks: Buffer[]): Promise<void> {
    if (this.done) throw new Error('blob writer already finished');
    let bytes = 0;
    for (const chunk of chunks) {
      this.hash.update(chunk);
      bytes += chunk.length;
    }
    this.size += bytes;
    await this.handle.writev(chunks);
    this.syncBehind.wrote(bytes);
  }

  async commit(expected: Digest, expectedSize?: number): Promise<void> {
    if (this.done) throw new Error('blob writer already finished');
    try {
      verifyContent(this.hash, this.size, expected, expectedSize);
      await this.syncBehind.settle();
      await this.handle.sync();
      await this.handle.close();
      this.done = true;
      await commitFile(this.temp, this.destination);
    } catch (err) {
      await this.cancel();
      throw err;
    }
  }

  async cancel(): Promise<void> {
    if (!this.done) {
      this.done = true;
      await this.syncBehind.settle().catch(() => {});
      await this.handle.close().catch(() => {});
    }
    await unlink(this.temp).catch(() => {});
  }
}
