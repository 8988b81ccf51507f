import { Readable } from 'node:stream';
import { mkdir, open, unlink, type FileHandle } from 'node:fs/promises';
import { createDigester, type Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { tempPath } from '../../../../lib/storage/atomic.js';
import type { Logger } from '../../../../lib/log.js';
import type { BlobStore } from '../store/blob-store.js';

const READ_CHUNK = 1024 * 1024;

/**
 * One download of one blob from upstream into a temp file. Every client of that blob (the first
 * and any that arrive while it runs) reads from the growing temp file, so there is exactly one
 * upstream read, clients get bytes as soon as they land, and a client that goes away does not
 * disturb the download. The blob becomes visible in the store only after its digest is verified.
 */
export class BlobFill {
  /** Bytes written so far (readable by clients). */
  written = 0;
  /** Total size from the upstream's Content-Length; undefined if it sent none. */
  size: number | undefined;
  done = false;
  error: Error | undefined;
  /** Resolves once the upstream answered with a body (size known), rejects with a client-ready error. */
  readonly ready: Promise<void>;
  /** Settles when the fill has finished (committed) or failed. */
  readonly finished: Promise<void>;

  private readonly waiters = new Set<() => void>();
  private readers = 0;
  private readHandle: FileHandle | undefined;
  private abandonTimer: NodeJS.Timeout | undefined;
  private abort: (() => void) | undefined;
  private resolveReady!: () => void;
  private rejectReady!: (err: Error) => void;
  private resolveFinished!: () => void;

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
    let handle: FileHandle | undefined;
    const temp = tempPath(blobs.layout.tmpDir);
    try {
      const { body, size } = await openUpstream();
      this.size = size;
      this.abort = () => body.destroy(new Error('cache fill abandoned: no client for too long'));
      await mkdir(blobs.layout.tmpDir, { recursive: true });
      handle = await open(temp, 'w+', 0o644);
      this.readHandle = handle;
      this.resolveReady();
      this.armAbandonTimer();
      const hash = createDigester(this.digest.algorithm);
      for await (const chunk of body as AsyncIterable<Buffer>) {
        hash.update(chunk);
        let offset = 0;
        while (offset < chunk.length) {
          const { bytesWritten } = await handle.write(chunk, offset, chunk.length - offset, this.written + offset);
          offset += bytesWritten;
        }
        this.written += chunk.length;
        this.notify();
      }
      if (this.size !== undefined && this.written !== this.size) {
        throw new Error(`upstream sent ${this.written} bytes, Content-Length said ${this.size}`);
      }
      const actual = `${this.digest.algorithm}:${hash.digest('hex')}`;
      if (actual !== this.digest.value) {
        throw new RegistryError('DIGEST_INVALID', { expected: this.digest.value, actual }, {
          status: 502, message: 'upstream sent a blob whose content does not match its digest; nothing was cached',
        });
      }
      this.size = this.written;
      await handle.sync();
      await blobs.commitVerified(temp, this.digest);
      await blobs.link(name, this.digest);
      this.done = true;
      log.info({ name, digest: this.digest.value, size: this.written }, 'blob cached from upstream');
    } catch (err) {
      this.error = err instanceof Error ? err : new Error(String(err));
      this.rejectReady(this.error);
      if (this.written > 0 || handle) log.warn({ name, digest: this.digest.value, err: this.error.message }, 'cache fill failed; nothing cached');
      await unlink(temp).catch(() => {});
    } finally {
      clearTimeout(this.abandonTimer);
      this.notify();
      this.releaseHandleIfIdle();
      this.resolveFinished();
    }
  }

  /**
   * A stream of bytes start..end (inclusive) that follows the download as it grows. Only while the
   * fill runs: once `done`, serve the committed blob from the store instead.
   */
  createReader(start: number, end: number): Readable {
    this.readers++;
    clearTimeout(this.abandonTimer);
    let position = start;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.readers--;
      this.armAbandonTimer();
      this.releaseHandleIfIdle();
    };
    const fill = this;
    const stream = new Readable({
      highWaterMark: READ_CHUNK,
      read() {
        const pump = async (): Promise<void> => {
          if (position > end) return void this.push(null);
          const readable = fill.readable;
          if (position < readable && fill.readHandle) {
            const length = Math.min(READ_CHUNK, readable - position, end - position + 1);
            const buffer = Buffer.allocUnsafe(length);
            const { bytesRead } = await fill.readHandle.read(buffer, 0, length, position);
            position += bytesRead;
            this.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead));
            return;
          }
          if (fill.error) return void this.destroy(fill.error);
          if (fill.done) return void this.push(null);
          await new Promise<void>((resolve) => fill.waiters.add(resolve));
          return pump();
        };
        pump().catch((err: Error) => this.destroy(err));
      },
      destroy(err, callback) {
        release();
        callback(err);
      },
    });
    stream.on('end', release);
    return stream;
  }

  /**
   * How many bytes readers may be given: all of them once the blob is verified; until then never
   * its last byte, so a blob that fails verification reaches no client whole (the transfer breaks).
   */
  private get readable(): number {
    if (this.done) return this.written;
    return this.size === undefined ? 0 : Math.min(this.written, this.size - 1);
  }

  private notify(): void {
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const waiter of waiters) waiter();
  }

  private armAbandonTimer(): void {
    if (this.readers > 0 || this.done || this.error || !this.abort) return;
    clearTimeout(this.abandonTimer);
    this.abandonTimer = setTimeout(() => this.abort?.(), this.fillTimeoutMs);
    this.abandonTimer.unref();
  }

  private releaseHandleIfIdle(): void {
    if (this.readers === 0 && (this.done || this.error) && this.readHandle) {
      const handle = this.readHandle;
      this.readHandle = undefined;
      handle.close().catch(() => {});
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
