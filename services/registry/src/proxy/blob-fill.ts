import { Readable } from 'node:stream';
import { close, fsync, open as openFd, read, writev } from 'node:fs';
import { mkdir, unlink } from 'node:fs/promises';
import type { Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { tempPath } from '../../../../lib/storage/atomic.js';
import type { Logger } from '../../../../lib/log.js';
import type { BlobStore } from '../../../../lib/storage/blob-store.js';
import { FileHasher, type FileHashJob } from './file-hasher.js';

/** Bytes one file read gives a client that fell behind the memory window. */
const READ_CHUNK = 1024 * 1024;
/** The most one writev takes: received chunks coalesced into few large writes. */
const WRITE_BATCH = 4 * 1024 * 1024;
/** A write starts once this much is waiting (or the upstream ended): few writes and thread-pool trips. */
const WRITE_MIN = 1024 * 1024;
/** The hashing thread is told about newly written bytes in steps of at least this much. */
const HASH_STEP = 4 * 1024 * 1024;
/** writev takes at most IOV_MAX (1024) buffers. */
const WRITE_BATCH_BUFFERS = 1024;
/** Upstream reading pauses when this much received data is not on disk yet, and resumes at half. */
const WRITE_BEHIND_MAX = 16 * 1024 * 1024;
/** What a client's stream buffers before it waits for the socket. */
const CLIENT_BUFFER = 1024 * 1024;

/** One hashing thread for every fill of this process. */
const hasher = new FileHasher();

const writevP = (fd: number, buffers: Buffer[], position: number) => new Promise<number>((resolve, reject) => {
  writev(fd, buffers, position, (err, bytes) => (err ? reject(err) : resolve(bytes)));
});
const fsyncP = (fd: number) => new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));
const openP = (path: string) => new Promise<number>((resolve, reject) => {
  openFd(path, 'w+', 0o644, (err, fd) => (err ? reject(err) : resolve(fd)));
});

/**
 * One download of one blob from upstream. Every client of that blob (the first and any that arrive
 * while it runs, with or without a Range) shares it, so there is exactly one upstream read, and a
 * client that goes away does not disturb it.
 *
 * Received chunks go to the clients (handed the same buffers from memory) and to a temp file (one
 * background writer coalescing everything received into large writev calls), neither waiting for
 * the other; a hashing thread (file-hasher.ts) digests what the writer has put in the file, in
 * parallel. Upstream reading pauses only when the writer falls WRITE_BEHIND_MAX behind; a client
 * slower than the writer reads the bytes it missed back from the temp file. No client gets the
 * last byte before the digest matched, so a blob that fails verification reaches no client whole
 * (the transfer breaks). The blob becomes visible in the store only once it is verified, written
 * and fsynced (then renamed); a failure of those last steps, after the clients had their last
 * byte, loses the cache copy only.
 */
export class BlobFill {
  /** Bytes received from upstream. */
  received = 0;
  /** Bytes written to the temp file: [0, written) is on disk, [written, received) in `chunks`. */
  written = 0;
  /** Total size from the upstream's Content-Length; undefined if it sent none. */
  size: number | undefined;
  /** All bytes received and the digest matched: clients may have the last byte. */
  verified = false;
  /** Committed: the blob is in the store (new clients are served from there). */
  done = false;
  error: Error | undefined;
  /** Resolves once the upstream answered with a body (size known), rejects with a client-ready error. */
  readonly ready: Promise<void>;
  /** Settles when the fill has finished (committed, or failed, or lost its cache copy). */
  readonly finished: Promise<void>;

  /** Received chunks not yet wholly on disk, in order, covering [chunksStart, received). */
  private chunks: Buffer[] = [];
  /** File offset of chunks[0]. */
  private chunksStart = 0;
  private readonly waiters = new Set<() => void>();
  private readers = 0;
  private fd: number | undefined;
  private writing = false;
  /** run() is over: committed, failed, or the cache copy was lost. */
  private ended = false;
  private hash: FileHashJob | undefined;
  private verifying = false;
  /** Bytes the hashing thread was told are written (finish() tells it the rest). */
  private hashAnnounced = 0;
  private upstreamEnded = false;
  private upstreamEndedAt = 0;
  private verifiedAt = 0;
  private paused = false;
  private body: Readable | undefined;
  private abandonTimer: NodeJS.Timeout | undefined;
  private resolveReady!: () => void;
  private rejectReady!: (err: Error) => void;
  private resolveFinished!: () => void;
  private settle!: (err?: Error) => void;

  constructor(readonly digest: Digest, private readonly fillTimeoutMs: number) {
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
    this.finished = new Promise((resolve) => { this.resolveFinished = resolve; });
  }

  /**
   * Runs the download: `openUpstream` returns the upstream body and its size (or throws a mapped
   * RegistryError). Called once, by whoever created the fill.
   */
  async run(
    openUpstream: () => Promise<{ body: Readable; size: number | undefined }>,
    blobs: BlobStore,
    name: string,
    log: Logger,
  ): Promise<void> {
    const temp = tempPath(blobs.layout.tmpDir);
    const startedAt = Date.now();
    let created = false;
    try {
      const { body, size } = await openUpstream();
      this.size = size;
      this.body = body;
      await mkdir(blobs.layout.tmpDir, { recursive: true });
      this.fd = await openP(temp);
      created = true;
      this.hash = hasher.start(this.digest.algorithm, temp);
      // Resolved once every byte is written and the digest matched; rejected by any failure.
      const received = new Promise<void>((resolve, reject) => {
        this.settle = (err) => (err ? reject(err) : resolve());
      });
      this.receive(body);
      this.resolveReady();
      this.armAbandonTimer();
      await received;
      await fsyncP(this.fd);
      await blobs.commitVerified(temp, this.digest);
      created = false;
      await blobs.link(name, this.digest);
      this.done = true;
      log.info({
        name, digest: this.digest.value, size: this.received, ms: Date.now() - startedAt,
        // From the upstream's last byte to the digest's match (writing and hashing the rest).
        verifyWaitMs: this.verifiedAt - this.upstreamEndedAt,
      }, 'blob cached from upstream');
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      if (this.verified) {
        // The clients have (or will read) every byte: only the cache copy is lost.
        log.warn({ name, digest: this.digest.value, err: error.message }, 'blob served but not cached: storing it failed');
      } else {
        this.fail(error);
        if (this.received > 0 || created) log.warn({ name, digest: this.digest.value, err: error.message }, 'cache fill failed; nothing cached');
      }
      if (created) await unlink(temp).catch(() => {});
    } finally {
      this.ended = true;
      clearTimeout(this.abandonTimer);
      this.notify();
      this.releaseFileIfIdle();
      this.resolveFinished();
    }
  }

  /** Feeds the upstream body to the clients and the writer (which feeds the hashing thread). */
  private receive(body: Readable): void {
    body.on('data', (chunk: Buffer) => {
      if (this.error) return;
      if (this.size !== undefined && this.received + chunk.length > this.size) {
        this.fail(new Error(`upstream sent more than the ${this.size} bytes its Content-Length said`));
        return;
      }
      this.chunks.push(chunk);
      this.received += chunk.length;
      if (!this.paused && this.received - this.written >= WRITE_BEHIND_MAX) {
        this.paused = true;
        body.pause();
      }
      this.notify();
      this.write();
    });
    body.once('end', () => {
      if (this.error) return;
      if (this.size !== undefined && this.received !== this.size) {
        this.fail(new Error(`upstream sent ${this.received} bytes, Content-Length said ${this.size}`));
        return;
      }
      this.size = this.received;
      this.upstreamEnded = true;
      this.upstreamEndedAt = Date.now();
      this.write();
    });
    body.once('error', (err) => this.fail(err));
    body.once('close', () => {
      if (!this.upstreamEnded) this.fail(new Error('upstream closed the connection before the end of the blob'));
    });
  }

  /** Everything is received and written: the hashing thread's digest decides whether clients get the last byte. */
  private verify(): void {
    if (this.verifying) return;
    this.verifying = true;
    this.hash!.finish(this.received).then((hex) => {
      if (this.error) return;
      const actual = `${this.digest.algorithm}:${hex}`;
      if (actual !== this.digest.value) {
        this.fail(new RegistryError('DIGEST_INVALID', { expected: this.digest.value, actual }, {
          status: 502, message: 'upstream sent a blob whose content does not match its digest; nothing was cached',
        }));
        return;
      }
      this.verified = true;
      this.verifiedAt = Date.now();
      this.notify();
      this.settle();
    }, (err: Error) => this.fail(err));
  }

  /** The background writer: everything received and not yet written, in as few writev calls as it takes. */
  private write(): void {
    if (this.writing || this.error || this.fd === undefined) return;
    if (this.written === this.received) {
      if (this.upstreamEnded) this.verify();
      return;
    }
    if (!this.upstreamEnded && this.received - this.written < WRITE_MIN) return;
    const batch: Buffer[] = [];
    let bytes = 0;
    // chunks[0] may be partly written already (a short writev).
    const skip = this.written - this.chunksStart;
    for (let i = 0; i < this.chunks.length && bytes < WRITE_BATCH && batch.length < WRITE_BATCH_BUFFERS; i++) {
      const chunk = i === 0 && skip > 0 ? this.chunks[0]!.subarray(skip) : this.chunks[i]!;
      batch.push(chunk);
      bytes += chunk.length;
    }
    this.writing = true;
    writevP(this.fd, batch, this.written).then((n) => {
      this.writing = false;
      if (this.error) return this.releaseFileIfIdle();
      this.written += n;
      if (this.written - this.hashAnnounced >= HASH_STEP) {
        this.hashAnnounced = this.written;
        this.hash!.extend(this.written);
      }
      // Drop the chunks now wholly on disk: clients behind them read the file.
      let dropped = 0;
      while (dropped < this.chunks.length && this.chunksStart + this.chunks[dropped]!.length <= this.written) {
        this.chunksStart += this.chunks[dropped]!.length;
        dropped++;
      }
      if (dropped > 0) this.chunks.splice(0, dropped);
      if (this.paused && this.received - this.written <= WRITE_BEHIND_MAX / 2) {
        this.paused = false;
        this.body?.resume();
      }
      this.write();
    }, (err: Error) => {
      this.writing = false;
      this.fail(err);
      this.releaseFileIfIdle();
    });
  }

  private fail(err: Error): void {
    if (this.error || this.verified) return;
    this.error = err;
    this.rejectReady(err);
    this.hash?.cancel();
    this.chunks = [];
    this.body?.destroy();
    this.settle?.(err);
    this.notify();
  }

  /**
   * How many bytes readers may be given: all of them once the blob is verified; until then never
   * its last byte, so a blob that fails verification reaches no client whole.
   */
  private get readable(): number {
    if (this.verified) return this.received;
    return this.size === undefined ? 0 : Math.min(this.received, this.size - 1);
  }

  /**
   * A stream of bytes start..end (inclusive) that follows the download as it grows: from memory
   * while the client keeps up, from the temp file when it fell behind the writer. Only while the
   * fill runs: once `done`, serve the committed blob from the store instead.
   */
  createReader(start: number, end: number): Readable {
    this.readers++;
    clearTimeout(this.abandonTimer);
    let position = start;
    let released = false;
    let reading = false;
    let waiting = false;
    const release = () => {
      if (released) return;
      released = true;
      this.readers--;
      this.armAbandonTimer();
      this.releaseFileIfIdle();
    };
    const fill = this;
    const stream = new Readable({
      highWaterMark: CLIENT_BUFFER,
      read() {
        pump();
      },
      destroy(err, callback) {
        release();
        callback(err);
      },
    });
    const wake = () => {
      waiting = false;
      if (!stream.destroyed) pump();
    };
    function pump(): void {
      if (reading || waiting || stream.destroyed) return;
      for (;;) {
        if (fill.error) return void stream.destroy(fill.error);
        if (position > end) return void stream.push(null);
        const limit = Math.min(fill.readable, end + 1);
        if (position < limit) {
          if (position >= fill.chunksStart && fill.chunks.length > 0) {
            const slice = fill.sliceAt(position, limit);
            position += slice.length;
            if (!stream.push(slice)) return;
            continue;
          }
          if (position < fill.written) {
            if (fill.fd === undefined) return void stream.destroy(new Error('cache fill file already closed'));
            return readFile(Math.min(limit, fill.written));
          }
        }
        waiting = true;
        fill.waiters.add(wake);
        return;
      }
    }
    function readFile(until: number): void {
      reading = true;
      const length = Math.min(READ_CHUNK, until - position);
      const buffer = Buffer.allocUnsafe(length);
      read(fill.fd!, buffer, 0, length, position, (err, bytesRead) => {
        reading = false;
        if (stream.destroyed) return;
        if (err) return void stream.destroy(err);
        if (bytesRead === 0) return void stream.destroy(new Error(`cache fill file ended at ${position}`));
        position += bytesRead;
        if (stream.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead))) pump();
      });
    }
    stream.on('end', release);
    return stream;
  }

  /** The received bytes from `position` (>= chunksStart) up to `limit`, as a view of one chunk. */
  private sliceAt(position: number, limit: number): Buffer {
    // Clients that keep up read the newest chunks: search from the end.
    let offset = this.received;
    for (let i = this.chunks.length - 1; i >= 0; i--) {
      const chunk = this.chunks[i]!;
      offset -= chunk.length;
      if (offset <= position) {
        const from = position - offset;
        return chunk.subarray(from, Math.min(chunk.length, limit - offset));
      }
    }
    throw new Error(`cache fill: byte ${position} is not in memory`);
  }

  private notify(): void {
    if (this.waiters.size === 0) return;
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const waiter of waiters) waiter();
  }

  private armAbandonTimer(): void {
    if (this.readers > 0 || this.done || this.error || !this.body || this.upstreamEnded) return;
    clearTimeout(this.abandonTimer);
    this.abandonTimer = setTimeout(() => this.body?.destroy(new Error('cache fill abandoned: no client for too long')), this.fillTimeoutMs);
    this.abandonTimer.unref();
  }

  /** The temp file (once committed, the blob: the same inode) is closed once the fill ended and no reader needs it. */
  private releaseFileIfIdle(): void {
    if (this.readers === 0 && this.ended && !this.writing && this.fd !== undefined) {
      const fd = this.fd;
      this.fd = undefined;
      close(fd, () => {});
    }
  }
}

/** The in-flight fills of one worker, by digest: N concurrent requests for a blob share one fill. */
export class BlobFills {
  private readonly inflight = new Map<string, BlobFill>();

  constructor(private readonly fillTimeoutMs: number) {}

  get(digest: Digest): BlobFill | undefined {
    return this.inflight.get(digest.value);
  }

  /** The running fill for `digest`, or a new one started with `start` (which runs it). */
  getOrStart(digest: Digest, start: (fill: BlobFill) => Promise<void>): BlobFill {
    const existing = this.inflight.get(digest.value);
    if (existing) return existing;
    const fill = new BlobFill(digest, this.fillTimeoutMs);
    this.inflight.set(digest.value, fill);
    void start(fill).finally(() => {
      if (this.inflight.get(digest.value) === fill) this.inflight.delete(digest.value);
    });
    return fill;
  }
}
