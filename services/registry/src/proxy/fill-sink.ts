import { createHash, randomUUID, type Hash } from 'node:crypto';
import { fsync, open as openFd } from 'node:fs';
import { mkdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { commitFile } from '../../../../lib/storage/atomic.js';
import type { BlobWriter, StorageDriver } from '../../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../../lib/storage/driver/filesystem.js';

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
 * `open()` returns; clients that fell behind the memory window read it), shows each chunk to
 * `received()` and, when `store` is set, hands each chunk to it in order; `verify()` checks the digest
 * (throws when it does not match: nothing visible), and the fill releases the blob's last byte to
 * clients only after it; `persist()` then makes the blob durable and visible where verify() did not
 * already (the filesystem: once the spool, which is the blob there, has every byte).
 */
export interface FillSink {
  /** Creates the spool file; its fd, opened read-write. */
  open(): Promise<number>;
  /** Every received chunk, in order, as it arrives (the filesystem sink hashes it). */
  received(chunk: Buffer): void;
  /** A received chunk, in order; resolves once accepted (backpressure). Undefined: the spool is the blob. */
  readonly store: ((chunk: Buffer) => Promise<void>) | undefined;
  /** All `size` bytes are received (and stored): check the digest; on S3 also commit (complete the upload). */
  verify(size: number): Promise<void>;
  /** After verify() and once the spool has every byte: fsync and rename on the filesystem (nothing left to do on S3). */
  persist(fd: number): Promise<void>;
  /** Nothing becomes visible (safe after a failed commit, and twice). */
  cancel(): Promise<void>;
  /** The fill ended and no client reads the spool any more (its fd is closed). */
  release(): Promise<void>;
  /** The spool file's path once open() created it (the gateway may read a fill from it: fill-spool). */
  readonly spoolPath: string | undefined;
}

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
 * as the store, so an interrupted fill is one of the driver's incomplete writes). The bytes are
 * hashed as they arrive, from the same buffers the spool writer writes, so the digest is checked the
 * moment the upstream's last byte is in (not after the spool writer and a read-back caught up: that
 * wait was 10-30 ms per 20 MiB blob here); verify = digest check, persist = fsync and rename to the
 * key's path once every byte is written. The fsync (about 55 ms per 64 MiB here) comes after the
 * clients' last byte rather than before: if it or a write fails, the clients have a verified blob and
 * only the cache copy is lost.
 */
class FilesystemFillSink implements FillSink {
  readonly store = undefined;
  spoolPath: string | undefined;
  private readonly hash: Hash;
  private committed = false;

  constructor(private readonly driver: FilesystemDriver, private readonly key: string, private readonly digest: Digest) {
    this.hash = createHash(digest.algorithm);
  }

  async open(): Promise<number> {
    const { path, fd } = await createFile(this.driver.tmpDir, 'fill');
    this.spoolPath = path;
    return fd;
  }

  received(chunk: Buffer): void {
    this.hash.update(chunk);
  }

  async verify(): Promise<void> {
    const actual = `${this.digest.algorithm}:${this.hash.digest('hex')}`;
    if (actual !== this.digest.value) throw upstreamMismatch(this.digest, actual);
  }

  async persist(fd: number): Promise<void> {
    await fsyncP(fd);
    await commitFile(this.spoolPath!, this.driver.path(this.key));
    this.committed = true;
  }

  async cancel(): Promise<void> {
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

  received(): void {}

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
