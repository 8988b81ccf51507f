import { Readable } from 'node:stream';
import { close, read, writev } from 'node:fs';
import type { Digest } from '../../../../lib/oci/digest.js';
import type { Logger } from '../../../../lib/log.js';
import { fillSink, type FillSink, type FillTarget } from './fill-sink.js';

export type { FillTarget } from './fill-sink.js';

/** Bytes one file read gives a client that fell behind the memory window. */
const READ_CHUNK = 1024 * 1024;
/** The most one writev takes: received chunks coalesced into few large writes. */
const WRITE_BATCH = 4 * 1024 * 1024;
/** A write starts once this much is waiting (or the upstream ended): few writes and thread-pool trips. */
const WRITE_MIN = 1024 * 1024;
/** writev takes at most IOV_MAX (1024) buffers. */
const WRITE_BATCH_BUFFERS = 1024;
/** Upstream reading pauses when this much received data is not spooled (or stored) yet, and resumes at half. */
const WRITE_BEHIND_MAX = 16 * 1024 * 1024;
/** What a client's stream buffers before it waits for the socket. */
const CLIENT_BUFFER = 1024 * 1024;

const writevP = (fd: number, buffers: Buffer[], position: number) => new Promise<number>((resolve, reject) => {
  writev(fd, buffers, position, (err, bytes) => (err ? reject(err) : resolve(bytes)));
});

/**
 * One download of one blob from upstream. Every client of that blob (the first and any that arrive
 * while it runs, with or without a Range) shares it, so there is exactly one upstream read, and a
 * client that goes away does not disturb it.
 *
 * Received chunks go to the clients (handed the same buffers from memory), to a local spool file (one
 * background writer coalescing everything received into large writev calls) and, on a store other
 * than the filesystem, to the store's blobWriter (fill-sink.ts), none waiting for the others. On the
 * filesystem the spool is the blob's temp file, and the sink hashes the chunks as they arrive. Upstream
 * reading pauses only when the spool or the store falls WRITE_BEHIND_MAX behind; a client slower
 * than the spool writer reads the bytes it missed back from the spool. No client gets the last byte
 * before the digest matched (on S3: before the multipart upload was completed, so the blob is in the
 * store when a client has it whole), so a blob that fails verification reaches no client whole (the
 * transfer breaks) and nothing of it becomes visible. Verification does not wait for the spool writer
 * (chunks stay in memory until written, so clients read them there). On the filesystem the temp file
 * is fsynced and renamed into place once every byte is written; a failure of those last steps (or of a
 * write after verification) loses the cache copy only.
 */
export class BlobFill {
  /** Bytes received from upstream. */
  received = 0;
  /** Bytes in the spool file: [0, written) is there, [written, received) in `chunks`. */
  written = 0;
  /** Bytes the store's writer accepted (the spool is the blob on the filesystem: then unused). */
  stored = 0;
  /** Total size from the upstream's Content-Length; undefined if it sent none. */
  size: number | undefined;
  /** Every byte received and verified (on S3: committed): clients may have the last byte. */
  verified = false;
  /** Committed and linked (new clients are served from the store). */
  done = false;
  error: Error | undefined;
  /** Resolves once the upstream answered with a body (size known), rejects with a client-ready error. */
  readonly ready: Promise<void>;
  /** Settles when the fill has finished (committed, or failed). */
  readonly finished: Promise<void>;

  /** Received chunks not yet wholly in the spool, in order, covering [chunksStart, received). */
  private chunks: Buffer[] = [];
  /** File offset of chunks[0]. */
  private chunksStart = 0;
  /** Received chunks the store's writer has not taken yet. */
  private storeQueue: Buffer[] = [];
  private storing = false;
  private readonly waiters = new Set<() => void>();
  private readers = 0;
  private fd: number | undefined;
  private sink: FillSink | undefined;
  private writing = false;
  /** run() is over: committed, or failed. */
  private ended = false;
  private verifying = false;
  /** A spool write failed after verification: the clients are served from memory, the cache copy is lost. */
  private spoolFailure: Error | undefined;
  /** Verification failed before the spool had every byte: the fill fails once it has (see verifyIfComplete). */
  private verifyFailure: Error | undefined;
  /** run()'s wait for the spool to have every byte (the filesystem: before persist). */
  private spoolWaiter: { resolve: () => void; reject: (err: Error) => void } | undefined;
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
   * RegistryError); the blob is committed to `target`, then `link` makes it the repository's.
   * Called once, by whoever created the fill.
   */
  async run(
    openUpstream: () => Promise<{ body: Readable; size: number | undefined }>,
    target: FillTarget,
    link: () => Promise<void>,
    name: string,
    log: Logger,
  ): Promise<void> {
    const startedAt = Date.now();
    const sink = fillSink(target, this.digest);
    let opened = false;
    let persisted = false;
    try {
      const { body, size } = await openUpstream();
      this.size = size;
      this.body = body;
      this.fd = await sink.open();
      this.sink = sink;
      opened = true;
      // Resolved once every byte is spooled (and stored) and verified; rejected by any failure.
      const verified = new Promise<void>((resolve, reject) => {
        this.settle = (err) => (err ? reject(err) : resolve());
      });
      this.receive(body);
      this.resolveReady();
      this.armAbandonTimer();
      await verified;
      // On the filesystem the spool is the blob: every byte must be in it before fsync and rename.
      if (!sink.store) await this.whenSpooled();
      await sink.persist(this.fd);
      persisted = true;
      await link();
      this.done = true;
      log.info({
        name, digest: this.digest.value, size: this.received, ms: Date.now() - startedAt, storage: target.driver.kind,
        // From the upstream's last byte to the clients' (spooling, storing and hashing the rest; on S3 the commit).
        verifyWaitMs: this.verifiedAt - this.upstreamEndedAt,
      }, 'blob cached from upstream');
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      if (this.verified) {
        // The clients have (or will read) every byte: only the cache copy or this repository's link is lost.
        log.warn({ name, digest: this.digest.value, err: error.message }, 'blob served but not cached: storing or linking it failed');
      } else {
        this.fail(error);
        if (this.received > 0 || opened) log.warn({ name, digest: this.digest.value, err: error.message }, 'cache fill failed; nothing cached');
      }
      if (opened && !persisted) await sink.cancel().catch(() => {});
    } finally {
      this.ended = true;
      clearTimeout(this.abandonTimer);
      this.notify();
      this.releaseFileIfIdle();
      this.resolveFinished();
    }
  }

  /** Feeds the upstream body to the clients, the spool writer and the store. */
  private receive(body: Readable): void {
    body.on('data', (chunk: Buffer) => {
      if (this.error) return;
      if (this.size !== undefined && this.received + chunk.length > this.size) {
        this.fail(new Error(`upstream sent more than the ${this.size} bytes its Content-Length said`));
        return;
      }
      this.chunks.push(chunk);
      this.received += chunk.length;
      this.sink!.received(chunk);
      if (this.sink!.store) this.storeQueue.push(chunk);
      else this.stored = this.received;
      if (!this.paused && this.received - Math.min(this.written, this.stored) >= WRITE_BEHIND_MAX) {
        this.paused = true;
        body.pause();
      }
      this.notify();
      this.write();
      this.storeNext();
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
      this.verifyIfComplete();
    });
    body.once('error', (err) => this.fail(err));
    body.once('close', () => {
      if (!this.upstreamEnded) this.fail(new Error('upstream closed the connection before the end of the blob'));
    });
  }

  /** Everything is received and stored: the sink verifies (S3: and commits), then clients get the last byte. */
  private verifyIfComplete(): void {
    if (this.verifying || this.error || !this.upstreamEnded) return;
    if (this.stored !== this.received || this.storing) return;
    this.verifying = true;
    this.sink!.verify(this.received).then(() => {
      if (this.error) return;
      this.verified = true;
      this.verifiedAt = Date.now();
      this.notify();
      this.settle();
    }, (err: Error) => {
      // Clients (and spool followers) still get every byte but the last before the transfer breaks.
      this.verifyFailure = err;
      this.spoolProgress();
    });
  }

  private resumeIfCaughtUp(): void {
    if (this.paused && this.received - Math.min(this.written, this.stored) <= WRITE_BEHIND_MAX / 2) {
      this.paused = false;
      this.body?.resume();
    }
  }

  /** Hands received chunks to the store's writer, one at a time, in order. */
  private storeNext(): void {
    const store = this.sink?.store;
    if (!store || this.storing || this.error) return;
    const chunk = this.storeQueue.shift();
    if (!chunk) return this.verifyIfComplete();
    this.storing = true;
    store(chunk).then(() => {
      this.storing = false;
      if (this.error) return;
      this.stored += chunk.length;
      this.resumeIfCaughtUp();
      this.storeNext();
    }, (err: Error) => {
      this.storing = false;
      this.fail(err);
    });
  }

  /** Resolves once the upstream ended and the spool has every byte; rejects when a spool write failed. */
  private whenSpooled(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.spoolWaiter = { resolve, reject };
      this.spoolProgress();
    });
  }

  /** Settles run()'s wait for the spool, and lets the spool go once nothing needs it. */
  private spoolProgress(): void {
    const complete = this.upstreamEnded && this.written === this.received && !this.writing;
    if (this.verifyFailure && complete) this.fail(this.verifyFailure);
    if (this.spoolFailure) this.spoolWaiter?.reject(this.spoolFailure);
    else if (complete) this.spoolWaiter?.resolve();
    this.releaseFileIfIdle();
  }

  /** The background spool writer: everything received and not yet written, in as few writev calls as it takes. */
  private write(): void {
    if (this.writing || this.error || this.spoolFailure || this.fd === undefined) return;
    if (this.written === this.received) return this.spoolProgress();
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
      // Drop the chunks now wholly in the spool: clients behind them read the file.
      let dropped = 0;
      while (dropped < this.chunks.length && this.chunksStart + this.chunks[dropped]!.length <= this.written) {
        this.chunksStart += this.chunks[dropped]!.length;
        dropped++;
      }
      if (dropped > 0) this.chunks.splice(0, dropped);
      // Spool followers (spoolEvents) read up to `written`.
      this.notify();
      this.resumeIfCaughtUp();
      this.write();
    }, (err: Error) => {
      this.writing = false;
      if (this.verified) {
        // Clients still have every byte from memory (chunks stay until written); spool followers get the error.
        this.spoolFailure = err;
        this.notify();
      } else {
        this.fail(err);
      }
      this.spoolProgress();
    });
  }

  private fail(err: Error): void {
    if (this.error || this.verified) return;
    this.error = err;
    this.rejectReady(err);
    this.chunks = [];
    this.storeQueue = [];
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
   * while the client keeps up, from the spool file when it fell behind the writer. Only while the
   * fill runs: once `done`, serve the committed blob from the store instead.
   */
  createReader(start: number, end: number): Readable {
    const release = this.addReader();
    let position = start;
    let reading = false;
    let waiting = false;
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

  /**
   * For a reader of the spool file in another process (the gateway: services/gateway/src/fill-spool.ts):
   * newline-delimited JSON, first `{"spool":<path>,"size":<bytes>}`, then `{"written":<bytes>}` as the
   * spool grows (bytes [0, written) are in the file), and last `{"verified":true}` (every byte may go
   * out) or `{"error":<message>}` (the blob must not reach any client whole). Undefined when this fill
   * has no spool to follow (not open yet, or over). It counts as a reader until it is destroyed: the
   * spool stays while the other process may still open it.
   */
  spoolEvents(): Readable | undefined {
    const path = this.sink?.spoolPath;
    if (path === undefined || this.size === undefined || this.ended || this.error) return undefined;
    const release = this.addReader();
    let sentWritten = -1;
    let over = false;
    const stream = new Readable({
      read() {},
      destroy(err, callback) {
        release();
        callback(err);
      },
    });
    const update = () => {
      if (over || stream.destroyed) return;
      // What is spooled first, even when the fill failed: clients get those bytes (never the last one).
      if (this.written !== sentWritten) {
        sentWritten = this.written;
        stream.push(`{"written":${sentWritten}}\n`);
      }
      const error = this.error ?? this.spoolFailure;
      if (error) {
        over = true;
        stream.push(`${JSON.stringify({ error: error.message })}\n`);
        return void stream.push(null);
      }
      // The follower reads the spool: "verified" once it also has every byte.
      if (this.verified && this.written === this.received) {
        over = true;
        stream.push('{"verified":true}\n');
        return void stream.push(null);
      }
      this.waiters.add(update);
    };
    stream.push(`${JSON.stringify({ spool: path, size: this.size })}\n`);
    update();
    stream.on('end', release);
    return stream;
  }

  /**
   * One more reader of this fill (a client's stream, a spool follower): while any reads, the fill is
   * not abandoned and the spool stays open. Returns its release (idempotent).
   */
  private addReader(): () => void {
    this.readers++;
    clearTimeout(this.abandonTimer);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.readers--;
      this.armAbandonTimer();
      this.releaseFileIfIdle();
    };
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

  /** The spool (on the filesystem, once committed: the blob, the same inode) is closed once the fill ended and no reader needs it. */
  private releaseFileIfIdle(): void {
    if (this.readers === 0 && this.ended && !this.writing && this.fd !== undefined) {
      const fd = this.fd;
      const sink = this.sink;
      this.fd = undefined;
      close(fd, () => void sink?.release());
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
