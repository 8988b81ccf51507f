import { open, stat, type FileHandle } from 'node:fs/promises';
import { watch, type FSWatcher } from 'chokidar';

export interface TailPosition {
  /** Inode of the file the offset belongs to (a rotated file has a new one). */
  ino: number;
  offset: number;
}

const READ_CHUNK = 1024 * 1024;
/** A safety net beside file events: some filesystems (and chokidar on them) miss changes. */
const POLL_MS = 2_000;
/**
 * File events are coalesced into one read this long after the first: under load the gateway
 * appends hundreds of times a second, and a stat and read per append cost more than the lines.
 */
const EVENT_DELAY_MS = 50;

/**
 * Follows a growing log file by byte offset: survives truncation (offset past the end → start over),
 * rotation (a new inode at the path → finish the old file through its open handle, then read the
 * new one from 0) and restarts (resume from a saved position when the inode still matches).
 */
export class LogTailer {
  private handle: FileHandle | undefined;
  private position: TailPosition;
  /** Bytes of an unfinished last line (bytes, not text: a read may end inside a UTF-8 character). */
  private partial: Buffer = Buffer.alloc(0);
  private watcher: FSWatcher | undefined;
  private timer: NodeJS.Timeout | undefined;
  private draining: Promise<void> | undefined;
  private again = false;
  private scheduled: NodeJS.Timeout | undefined;

  constructor(
    private readonly path: string,
    start: TailPosition | undefined,
    private readonly onLines: (lines: string[], position: TailPosition) => Promise<void> | void,
  ) {
    this.position = start ?? { ino: -1, offset: 0 };
  }

  get current(): TailPosition {
    return { ...this.position };
  }

  async start(): Promise<void> {
    this.watcher = watch(this.path, { ignoreInitial: true, awaitWriteFinish: false });
    this.watcher.on('all', () => {
      this.scheduled ??= setTimeout(() => {
        this.scheduled = undefined;
        void this.drain();
      }, EVENT_DELAY_MS);
    });
    this.timer = setInterval(() => { void this.drain(); }, POLL_MS);
    this.timer.unref();
    await this.drain();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    clearTimeout(this.scheduled);
    await this.watcher?.close();
    await this.draining;
    await this.handle?.close();
    this.handle = undefined;
  }

  /** Reads everything new; concurrent calls coalesce into one more pass. */
  drain(): Promise<void> {
    if (this.draining) {
      this.again = true;
      return this.draining;
    }
    this.draining = (async () => {
      do {
        this.again = false;
        await this.readNew();
      } while (this.again);
    })().finally(() => { this.draining = undefined; });
    return this.draining;
  }

  private async readNew(): Promise<void> {
    const info = await stat(this.path).catch(() => undefined);
    if (info && info.ino !== this.position.ino) {
      // Rotated (or first open): finish the old file, then switch.
      if (this.handle) await this.readFrom(this.handle, Infinity);
      await this.handle?.close();
      this.handle = await open(this.path, 'r').catch(() => undefined);
      this.position = { ino: info.ino, offset: 0 };
      this.partial = Buffer.alloc(0);
    } else if (!this.handle && info) {
      this.handle = await open(this.path, 'r').catch(() => undefined);
    }
    if (!this.handle || !info) return;
    if (info.size < this.position.offset) {
      // Truncated in place (copytruncate): start over.
      this.position.offset = 0;
      this.partial = Buffer.alloc(0);
    }
    await this.readFrom(this.handle, info.size);
  }

  private async readFrom(handle: FileHandle, end: number): Promise<void> {
    const buffer = Buffer.allocUnsafe(READ_CHUNK);
    while (this.position.offset < end) {
      const { bytesRead } = await handle.read(buffer, 0, READ_CHUNK, this.position.offset);
      if (bytesRead === 0) break;
      this.position.offset += bytesRead;
      const chunk = buffer.subarray(0, bytesRead);
      const data = this.partial.length > 0 ? Buffer.concat([this.partial, chunk]) : chunk;
      const end = data.lastIndexOf(0x0a);
      // Copied: `buffer` is reused by the next read.
      this.partial = Buffer.from(data.subarray(end + 1));
      if (end === -1) continue;
      // The saved position must not count an unfinished line, or a restart would skip it.
      const committed = { ino: this.position.ino, offset: this.position.offset - this.partial.length };
      await this.onLines(data.toString('utf8', 0, end).split('\n'), committed);
    }
  }
}
