import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { pino } from 'pino';
import { ACCESS_LOG_MESSAGE, type AccessLogEntry } from '../../../lib/access-log.js';

export type AccessLogRecord = Omit<AccessLogEntry, 'level' | 'time' | 'msg'>;

/**
 * Lines are written in batches of at least this many bytes, or after FLUSH_MS: one write(2) per
 * request cost the gateway ~15 µs of its ~140 µs per proxied manifest GET (bench/gateway-bench.ts).
 * (sonic-boom requires less than its 16 KiB maxWrite.)
 */
const BATCH_BYTES = 8 * 1024;
/** Longest a line waits for its batch; the logger service batches its atime updates by 1 s anyway. */
const FLUSH_MS = 100;
/** pino's `info`, the level of every access-log line. */
const INFO = 30;
const MESSAGE = JSON.stringify(ACCESS_LOG_MESSAGE);

/**
 * Writes the access log (see lib/access-log.ts): one JSON line per request, buffered, to a file.
 * The lines are the ones a pino logger wrote before (`{"level":30,"time":"<ISO>",<record>,"msg":"access"}`,
 * fields without a value left out), still through pino's asynchronous file destination, which
 * also writes what is buffered when the process exits; but serialized here, since the record is
 * flat: a pino logger call per request cost the gateway ~10 µs more.
 */
export class AccessLogWriter {
  private readonly destination: ReturnType<typeof pino.destination>;

  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.destination = pino.destination({ dest: path, sync: false, mkdir: true, minLength: BATCH_BYTES, periodicFlush: FLUSH_MS });
  }

  write(record: AccessLogRecord): void {
    const fields = JSON.stringify(record);
    this.destination.write(`{"level":${INFO},"time":"${new Date().toISOString()}",${fields.slice(1, -1)},"msg":${MESSAGE}}\n`);
  }

  flush(): void {
    this.destination.flush();
  }
}
