import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { parseAccessLogLine } from '../../../lib/access-log.js';
import { accessLogPathOf, ConfigError, loadLoggerConfig, type LoggerConfig } from '../../../lib/config.js';
import { createLogger, type Logger } from '../../../lib/log.js';
import { writeFileAtomic } from '../../../lib/storage/atomic.js';
import { LogTailer, type TailPosition } from './tail.js';
import { AtimeToucher } from './touch.js';

export interface AccessLogFollower {
  tailer: LogTailer;
  toucher: AtimeToucher;
  malformed(): number;
  flush(): Promise<void>;
  stop(): Promise<void>;
}

/** Starts following the access log; the saved position is written after each flushed batch. */
export async function followAccessLog(config: LoggerConfig, log: Logger): Promise<AccessLogFollower> {
  const logPath = accessLogPathOf(config);
  const statePath = config.statePath ?? resolve(config.root, 'logs', 'logger-state.json');
  const saved = await readFile(statePath, 'utf8').then((t) => JSON.parse(t) as TailPosition, () => undefined);
  const toucher = new AtimeToucher(config.root);
  let malformed = 0;
  let position: TailPosition | undefined = saved;
  let dirty = false;
  const tailer = new LogTailer(logPath, saved, async (lines, committed) => {
    for (const line of lines) {
      if (line.trim() === '') continue;
      const entry = parseAccessLogLine(line);
      if (!entry) {
        malformed++;
        continue;
      }
      const reading = toucher.record(entry);
      if (reading) await reading;
    }
    position = committed;
    dirty = true;
  });
  // The position saved must never run ahead of the atimes written: it is taken before the batch
  // is written (lines read meanwhile go to the next batch and the next save). Flushes run one at a
  // time, so an older position never overwrites a newer one and stop() waits for a timer's flush.
  let flushing: Promise<void> = Promise.resolve();
  const flushOnce = async () => {
    const covered = dirty ? position : undefined;
    dirty = false;
    try {
      await toucher.flush();
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
  const timer = setInterval(() => { flush().catch((err: unknown) => log.error({ err }, 'logger flush failed')); }, config.flushEvery);
  try {
    await tailer.start();
  } catch (err) {
    clearInterval(timer);
    throw err;
  }
  return {
    tailer, toucher, malformed: () => malformed, flush,
    stop: async () => {
      clearInterval(timer);
      await tailer.stop();
      await flush();
    },
  };
}

/** `stevedore logger`: the PM2 service that records when each blob and manifest was last served. */
export async function runLoggerService(argv: readonly string[]): Promise<number> {
  let config: LoggerConfig;
  try {
    config = loadLoggerConfig(argv);
  } catch (err) {
    process.stderr.write(`stevedore logger: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }
  const log = createLogger('logger', config.logLevel);
  const follower = await followAccessLog(config, log);
  log.info({ accessLog: accessLogPathOf(config), resumeAt: follower.tailer.current }, 'logger following the access log');
  process.send?.('ready');
  const report = setInterval(() => {
    log.info({ touched: follower.toucher.touched, malformed: follower.malformed(), position: follower.tailer.current }, 'logger progress');
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
