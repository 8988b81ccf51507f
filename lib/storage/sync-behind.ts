import type { FileHandle } from 'node:fs/promises';

/**
 * A background fdatasync starts after this many bytes written since the last one started. Small
 * enough to start within one PATCH of a chunked upload (often 5–16 MiB, each with its own handle);
 * on 256 MiB pushes 4 and 8 MiB did equally well, 32 MiB less so.
 */
export const SYNC_BEHIND_BYTES = 4 * 1024 * 1024;

/**
 * Background syncs in flight in the whole process at most. An fdatasync holds one of libuv's four
 * pool threads for as long as the disk takes (long on a slow disk), and every file read and write of
 * the process queues behind those threads: concurrent uploads must not take them all. A writer that
 * finds the cap reached starts its sync at a later write.
 */
export const MAX_SYNCS_IN_FLIGHT = 2;
let syncsInFlight = 0;

/**
 * Flushes a file being written in the background, one fdatasync in flight per file (and at most
 * MAX_SYNCS_IN_FLIGHT per process), so the fsync that must precede its rename only has the last
 * stretch left to write (a 256 MiB push spent ~170 ms in that one fsync, most of the writing left
 * for the end). Nothing is skipped: the final sync() stays; this only moves most of its work to
 * while the upload still streams.
 */
export class SyncBehind {
  private pending = 0;
  private inFlight: Promise<void> | undefined;
  private failure: { error: unknown } | undefined;

  constructor(private readonly handle: FileHandle) {}

  /** Counts `bytes` just written; starts a background datasync once enough are pending. */
  wrote(bytes: number): void {
    this.pending += bytes;
    if (this.inFlight || this.pending < SYNC_BEHIND_BYTES || syncsInFlight >= MAX_SYNCS_IN_FLIGHT) return;
    this.pending = 0;
    syncsInFlight++;
    this.inFlight = this.handle.datasync().then(
      () => { syncsInFlight--; this.inFlight = undefined; },
      (error: unknown) => { syncsInFlight--; this.inFlight = undefined; this.failure ??= { error }; },
    );
  }

  /** Waits for the background sync in flight (before the handle closes); a failed one throws here. */
  async settle(): Promise<void> {
    await this.inFlight;
    if (this.failure) throw this.failure.error;
  }
}
