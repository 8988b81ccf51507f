import { randomUUID } from 'node:crypto';
import { fsync, open as openFd } from 'node:fs';
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { commitFile } from '../../../../lib/storage/atomic.js';
import type { BlobWriter, StorageDriver } from '../../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../../lib/storage/driver/filesystem.js';
import { FileHasher, type FileHashJob } from './file-hasher.js';

/** Where a cache fill commits: the blob's key in the store, and a local directory for its spool. */
export interface FillTarget {
  driver: StorageDriver;
  /** layout.blobKey(digest). */
  key: string;
  /** Local (under --root, never the store): the spool that clients behind the memory window read. */
  spoolDir: string;
}

/**
 * The store side of one BlobFill. The fill writes every received byte to a local spool file (the fd
 * `open()` returns; clients that fell behind the memory window read it) and, when `store` is set,
 * hands each chunk to it in order; `verify()` checks the digest (throws when it does not match:
 * nothing visible), and the fill releases the blob's last byte to clients only after it; `persist()`
 * then makes the blob durable and visible where verify() did not already (the filesystem).
 */
export interface FillSink {
  /** Creates the spool file; its fd, opened read-write. */
  open(): Promise<number>;
  /** Bytes [0, upTo) are in the spool. */
  spooled(upTo: number): void;
  /** A received chunk, in order; resolves once accepted (backpressure). Undefined: the spool is the blob. */
  readonly store: ((chunk: Buffer) => Promise<void>) | undefined;
  /** All `size` bytes are spooled (and stored): check the digest; on S3 also commit (complete the upload). */
  verify(size: number): Promise<void>;
  /** After verify(): fsync and rename on the filesystem (nothing left to do on S3). */
  persist(fd: number): Promise<void>;
  /** Nothing becomes visible (safe after a failed commit, and twice). */
  cancel(): Promise<void>;
  /** The fill ended and no client reads the spool any more (its fd is closed). */
  release(): Promise<void>;
  /** The spool file's path once open() created it (the gateway may read a fill from it: fill-spool). */
  readonly spoolPath: string | undefined;
}

/** One hashing thread for every filesystem fill of this process. */
const hasher = new FileHasher();

const openP = (path: string) => new Promise<number>((resolve, reject) => {
  openFd(path, 'w+', 0o644, (err, fd) => (err ? reject(err) : resolve(fd)));
});
const fsyncP = (fd: number) => new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));

async function createFile(dir: string, name: string): Promise<{ path: string; fd: number }> {
  await mkdir(dir, { recursive: true });
  const path = join(dir, `${name}-${Date.now()}-${randomUUID()}`);
  return { path, fd: await openP(path) };
}

/** What the client sees when the upstream's bytes do not hash to the digest it was asked for. */
function upstreamMismatch(expected: Digest, actual: string | undefined): RegistryError {
  return new RegistryError('DIGEST_INVALID', { expected: expected.value, ...(actual ? { actual } : {}) }, {
    status: 502, message: 'upstream sent a blob whose content does not match its digest; nothing was cached',
  });
}

/** The sink for a target: the filesystem fast path, or any driver's blobWriter. */
export function fillSink(target: FillTarget, digest: Digest): FillSink {
  return target.driver instanceof FilesystemDriver
    ? new FilesystemFillSink(target.driver, target.key, digest)
    : new DriverFillSink(target, digest);
}

/**
 * Filesystem fast path: the spool is the blob's temp file in the driver's temp dir (same filesystem
 * as the store, so an interrupted fill is one of the driver's incomplete writes), hashed by a
 * background thread as it grows; verify = digest check, persist = fsync and rename to the key's path.
 * The same steps as the driver's blobWriter without a second copy of the bytes or hashing on the main
 * thread, and the fsync (about 55 ms per 64 MiB here) after the clients' last byte rather than before,
 * as before the driver: if it fails, the clients have a verified blob and only the cache copy is lost.
 */
class FilesystemFillSink implements FillSink {
  readonly store = undefined;
  spoolPath: string | undefined;
  private hash: FileHashJob | undefined;
  private committed = false;

  constructor(private readonly driver: FilesystemDriver, private readonly key: string, private readonly digest: Digest) {}

  async open(): Promise<number> {
    const { path, fd } = await createFile(this.driver.tmpDir, 'fill');
    this.spoolPath = path;
    this.hash = hasher.start(this.digest.algorithm, path);
    return fd;
  }

  spooled(upTo: number): void {
    this.hash?.extend(upTo);
  }

  async verify(size: number): Promise<void> {
    const hex = await this.hash!.finish(size);
    const actual = `${this.digest.algorithm}:${hex}`;
    if (actual !== this.digest.value) throw upstreamMismatch(this.digest, actual);
  }

  async persist(fd: number): Promise<void> {
    await fsyncP(fd);
    await commitFile(this.spoolPath!, this.driver.path(this.key));
    this.committed = true;
  }

  async cancel(): Promise<void> {
    this.hash?.cancel();
    if (this.spoolPath && !this.committed) await unlink(this.spoolPath).catch(() => {});
  }

  async release(): Promise<void> {
    // The temp file is the blob now (renamed), or was removed by cancel().
  }
}

/**
 * Any other driver (S3): chunks stream into `driver.blobWriter(key)` (a multipart upload to the
 * final key, completed only after the digest checked out), and a local spool file under --root
 * serves clients that fell behind, removed once the fill is over and none reads it.
 */
class DriverFillSink implements FillSink {
  readonly store: (chunk: Buffer) => Promise<void>;
  spoolPath: string | undefined;
  private writer: BlobWriter | undefined;

  constructor(private readonly target: FillTarget, private readonly digest: Digest) {
    this.store = (chunk) => this.writer!.write(chunk);
  }

  async open(): Promise<number> {
    this.writer = await this.target.driver.blobWriter(this.target.key, this.digest.algorithm);
    try {
      const { path, fd } = await createFile(this.target.spoolDir, 'spool');
      this.spoolPath = path;
      return fd;
    } catch (err) {
      await this.writer.cancel();
      throw err;
    }
  }

  spooled(): void {}

  /** The writer's commit verifies and completes the multipart upload: visible before the last byte goes out. */
  async verify(size: number): Promise<void> {
    try {
      await this.writer!.commit(this.digest, size);
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'DIGEST_INVALID') throw upstreamMismatch(this.digest, (err.detail as { actual?: string } | undefined)?.actual);
      throw err;
    }
  }

  async persist(): Promise<void> {}

  async cancel(): Promise<void> {
    await this.writer?.cancel();
  }

  async release(): Promise<void> {
    if (this.spoolPath) await unlink(this.spoolPath).catch(() => {});
  }
}
