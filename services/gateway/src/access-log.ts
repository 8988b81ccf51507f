import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { pino, type Logger } from 'pino';
import { ACCESS_LOG_MESSAGE, type AccessLogEntry } from '../../../lib/access-log.js';

export type AccessLogRecord = Omit<AccessLogEntry, 'level' | 'time' | 'msg'>;

/** Writes the access log (see lib/access-log.ts): one JSON line per request, buffered, to a file. */
export class AccessLogWriter {
  private readonly logger: Logger;

  constructor(path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.logger = pino(
      { base: undefined, timestamp: pino.stdTimeFunctions.isoTime },
      pino.destination({ dest: path, sync: false, mkdir: true }),
    );
  }

  write(record: AccessLogRecord): void {
    this.logger.info(record, ACCESS_LOG_MESSAGE);
  }

  flush(): void {
    this.logger.flush();
  }
}
