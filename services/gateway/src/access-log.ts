import { closeSync, mkdirSync, openSync, write, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { ACCESS_LOG_MESSAGE, type AccessLogEntry } from '../../../lib/access-log.js';

export type AccessLogRecord = Omit<AccessLogEntry, 'level' | 'time' | 'msg'>;

/**
 * Lines are written in batches of at least this many bytes, or after FLUSH_MS: one write(2) per
 * request cost the gateway ~15 µs of its ~140 µs per proxied manifest GET (bench/gateway-bench.ts).
 */
const BATCH_BYTES = 32 * 1024;
/** Longest a line waits for its batch; the logger service batches its atime updates by 1 s anyway. */
const FLUSH_MS = 100;
/** pino's `info`, the level of every access-log line. */
const INFO = 30;
const MESSAGE = JSON.stringify(ACCESS_LOG_MESSAGE);

/**
 * Writes the access log (see lib/access-log.ts): one JSON line per request, in pino's line format
 * (`{"level":30,"time":"<ISO>",<record>,"msg":"access"}`, fields without a value left out),
 * appended in batches by one asynchronous write at a time; what is still buffered is written
 * synchronously by flush() and when the process exits.
 *
 * Serialized and buffered here rather than through pino: a pino logger call per request cost the
 * gateway ~10 µs, and pino's file destination (sonic-boom) re-measures its whole pending buffer
 * on every write (~4 µs a line at 8 KiB batches).
 */
export class AccessLogWriter {
  private readonly fd: number;
  private lines: string[] = [];
  private bytes = 0;
  private writing = false;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private isoMs = 0;
  private iso = '';
  private readonly onExit = () => this.flush();
  /** Write failures so far (the lines of a failed batch are dropped: the log must never stop the gateway). */
  failures = 0;
  lastError: Error | undefined;

  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.fd = openSync(path, 'a', 0o640);
    process.once('exit', this.onExit);
  }

  write(record: AccessLogRecord): void {
    if (this.closed) return;
    const now = Date.now();
    // Many requests share a millisecond under load: format its time once.
    if (now !== this.isoMs) {
      this.isoMs = now;
      this.iso = new Date(now).toISOString();
    }
    const fields = JSON.stringify(record);
    const line = `{"level":${INFO},"time":"${this.iso}",${fields.slice(1, -1)},"msg":${MESSAGE}}\n`;
    this.lines.push(line);
    this.bytes += line.length;
    if (this.bytes >= BATCH_BYTES) this.writeBatch();
    else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.writeBatch();
      }, FLUSH_MS);
      this.timer.unref();
    }
  }

  private take(): Buffer | undefined {
    if (this.lines.length === 0) return undefined;
    const data = Buffer.from(this.lines.join(''), 'utf8');
    this.lines = [];
    this.bytes = 0;
    return data;
  }

  private writeBatch(): void {
    if (this.writing) return;
    const data = this.take();
    if (!data) return;
    this.writing = true;
    this.writeFrom(data, 0);
  }

  private writeFrom(data: Buffer, offset: number): void {
    write(this.fd, data, offset, data.length - offset, null, (err, written) => {
      if (!err && offset + written < data.length) return this.writeFrom(data, offset + written);
      if (err) {
        this.failures++;
        this.lastError = err;
      }
      this.writing = false;
      if (this.closed) closeSync(this.fd);
      else if (this.bytes >= BATCH_BYTES) this.writeBatch();
    });
  }

  /**
   * Writes what is buffered now, synchronously (a batch already being written finishes on its
   * own, so at exit the last two batches may land in either order; each is whole lines).
   */
  flush(): void {
    if (this.closed) return;
    const data = this.take();
    if (!data) return;
    try {
      let offset = 0;
      while (offset < data.length) offset += writeSync(this.fd, data, offset);
    } catch (err) {
      this.failures++;
      this.lastError = err as Error;
    }
  }

  /** Flushes and closes the file (after the batch being written, if any); later lines are dropped. */
  close(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.flush();
    this.closed = true;
    process.removeListener('exit', this.onExit);
    if (!this.writing) closeSync(this.fd);
  }
}
