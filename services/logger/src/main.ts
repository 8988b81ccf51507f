import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parseAccessLogLine } from '../../../lib/access-log.js';
import { accessLogPathOf, ConfigError, loadLoggerConfig, storageLocationOf, type LoggerConfig } from '../../../lib/config.js';
import { createLogger, type Logger } from '../../../lib/log.js';
import { writeFileAtomic } from '../../../lib/storage/atomic.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { openConfiguredStorage } from '../../../lib/storage/driver/open.js';
import { LogTailer, type TailPosition } from './tail.js';
import { ServedRecorder } from './served.js';

/**
 * How often served times are written when LOGGER_FLUSH_TIME is not set. On disk a batch is a small
 * local file: every second. On S3 each batch is a PUT (and a GET for the cleaner until it folds it):
 * every 30 s keeps that to 120 PUTs an hour per appliance and ~60 batches per 30-minute cleaner run,
 * while staying far below the cleaner's grace period (1 h by default), which is what protects content
 * served since the last flush. Nothing is lost by the delay: the log position is saved after the batch.
 */
export function defaultFlushEvery(driver: StorageDriver): number {
  return driver.kind === 's3' ? 30_000 : 1_000;
}

export interface AccessLogFollower {
  tailer: LogTailer;
  recorder: ServedRecorder;
  malformed(): number;
  flush(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts following the access log; the saved position is written after each flushed batch. */
export async function followAccessLog(config: LoggerConfig, log: Logger, storeDriver?: StorageDriver): Promise<AccessLogFollower> {
  const driver = storeDriver ?? await openConfiguredStorage(storageLocationOf(config, config.root), config);
  const logPath = accessLogPathOf(config);
  const statePath = config.statePath ?? resolve(config.root, 'logs', 'logger-state.json');
  const saved = await readFile(statePath, 'utf8').then((t) => JSON.parse(t) as TailPosition, () => undefined);
  const recorder = new ServedRecorder(driver);
  let malformed = 0;
  let position: TailPosition | undefined = saved;
  let dirty = false;
  const tailer = new LogTailer(logPath, saved, async (lines, committed) => {
    // Tag reads overlap (on S3 each is a GET); the position moves only once they all landed.
    const readings: Array<Promise<void>> = [];
    for (const line of lines) {
      if (line.trim() === '') continue;
      const entry = parseAccessLogLine(line);
      if (!entry) {
        malformed++;
        continue;
      }
      const reading = recorder.record(entry);
      if (reading) readings.push(reading);
    }
    await Promise.all(readings);
    position = committed;
    dirty = true;
  });
  // The position saved must never run ahead of the served times written: it is taken before the batch
  // is written (lines read meanwhile go to the next batch and the next save). Flushes run one at a
  // time, so an older position never overwrites a newer one and stop() waits for a timer's flush.
  let flushing: Promise<void> = Promise.resolve();
  const flushOnce = async () => {
    const covered = dirty ? position : undefined;
    dirty = false;
    try {
      await recorder.flush();
      if (covered) await writeFileAtomic(dirname(statePath), statePath, JSON.stringify(covered));
    } catch (err) {
      if (covered) dirty = true;
      throw err;
    }
  };
  const flush = (): Promise<void> => {
    const next = flushing.then(flushOnce, flushOnce);
    flushing = next.catch(() => {});
    return next;
  };
  // The timer runs from the start: catching up on a long backlog saves its progress as it goes.
  const timer = setInterval(() => { flush().catch((err: unknown) => log.error({ err }, 'logger flush failed')); }, config.flushEvery ?? defaultFlushEvery(driver));
  try {
    await tailer.start();
  } catch (err) {
    clearInterval(timer);
    throw err;
  }
  return {
    tailer, recorder, malformed: () => malformed, flush,
    stop: async () => {
      clearInterval(timer);
      await tailer.stop();
      await flush();
    },
  };
}

/** `stevedore logger`: the PM2 service that records when each blob and manifest was last served (the store's served index). */
export async function runLoggerService(argv: readonly string[]): Promise<number> {
  let config: LoggerConfig;
  try {
    config = loadLoggerConfig(argv);
  } catch (err) {
    process.stderr.write(`stevedore logger: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }
  const log = createLogger('logger', config.logLevel);
  const driver = await openConfiguredStorage(storageLocationOf(config, config.root), config);
  const follower = await followAccessLog(config, log, driver);
  log.info({ accessLog: accessLogPathOf(config), store: driver.location, instance: follower.recorder.instanceId, flushEvery: config.flushEvery ?? defaultFlushEvery(driver), resumeAt: follower.tailer.current }, 'logger following the access log');
  process.send?.('ready');
  const report = setInterval(() => {
    log.info({ recorded: follower.recorder.recorded, batches: follower.recorder.batches, malformed: follower.malformed(), position: follower.tailer.current }, 'logger progress');
  }, 60_000);
  report.unref();
  return new Promise((resolveExit) => {
    const stop = () => {
      clearInterval(report);
      follower.stop().then(() => resolveExit(0), (err: unknown) => {
        log.error({ err }, 'logger stop failed');
        resolveExit(1);
      });
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
