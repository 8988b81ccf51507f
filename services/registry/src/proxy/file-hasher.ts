import { Worker } from 'node:worker_threads';
import type { DigestAlgorithm } from '../../../../lib/oci/digest.js';

/** Messages to the hashing thread (file-hash-thread.ts). */
export type HasherRequest =
  | { type: 'start'; id: number; algorithm: DigestAlgorithm; path: string }
  | { type: 'extend'; id: number; upTo: number }
  | { type: 'finish'; id: number; size: number }
  | { type: 'cancel'; id: number };

/** Answers from the hashing thread: the digest (hex) of a finished job, or why it failed. */
export type HasherReply = { id: number; hex: string } | { id: number; error: string };

interface Pending {
  resolve: (hex: string) => void;
  reject: (err: Error) => void;
}

/**
 * Hashes growing files on one background thread, so that a cache fill's main thread only moves
 * bytes (upstream -> clients, -> temp file) while the digest is computed in parallel from what the
 * writer has put in the file (page cache: one copy, on the other thread). One thread serves every
 * fill of the worker; it is started on first use and does not keep the process alive.
 */
export class FileHasher {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  /** Starts hashing the file at `path` as it grows; feed it with extend(), end it with finish() or cancel(). */
  start(algorithm: DigestAlgorithm, path: string): FileHashJob {
    const id = this.nextId++;
    const result = new Promise<string>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    // A failure is reported (and handled) by finish(); a cancelled job's result is never asked for.
    result.catch(() => {});
    this.post({ type: 'start', id, algorithm, path });
    this.worker?.ref();
    return new FileHashJob(this, id, result);
  }

  /** @internal */
  post(message: HasherRequest): void {
    this.thread().postMessage(message);
  }

  /** @internal */
  forget(id: number): void {
    this.pending.delete(id);
    this.idle();
  }

  /** The thread keeps the process alive only while a job waits for it. */
  private idle(): void {
    if (this.pending.size === 0) this.worker?.unref();
  }

  private thread(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(new URL('./file-hash-thread.js', import.meta.url));
    worker.on('message', (reply: HasherReply) => {
      const waiting = this.pending.get(reply.id);
      if (!waiting) return;
      this.pending.delete(reply.id);
      this.idle();
      if ('hex' in reply) waiting.resolve(reply.hex);
      else waiting.reject(new Error(`hashing failed: ${reply.error}`));
    });
    const lost = (err: Error) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      for (const [id, waiting] of this.pending) {
        this.pending.delete(id);
        waiting.reject(err);
      }
    };
    worker.on('error', lost);
    worker.on('exit', (code) => lost(new Error(`hashing thread exited (${code})`)));
    // Unref'd (by idle()) only after the listeners: adding a 'message' listener refs the worker again.
    this.worker = worker;
    return worker;
  }
}

/** One file being hashed. */
export class FileHashJob {
  constructor(private readonly hasher: FileHasher, private readonly id: number, private readonly result: Promise<string>) {}

  /** Bytes [0, upTo) are in the file: hash them. */
  extend(upTo: number): void {
    this.hasher.post({ type: 'extend', id: this.id, upTo });
  }

  /** The file is complete at `size` bytes: resolves with its digest (hex) once hashed. */
  finish(size: number): Promise<string> {
    this.hasher.post({ type: 'finish', id: this.id, size });
    return this.result;
  }

  cancel(): void {
    this.hasher.forget(this.id);
    this.hasher.post({ type: 'cancel', id: this.id });
  }
}
