import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger } from 'pino';

/** pino JSON logs, one base field naming the service; credentials never reach a log line. */
export function createLogger(service: string, level: LevelWithSilent = 'info', destination?: NodeJS.WritableStream): Logger {
  return pino(
    {
      level,
      base: { service },
      redact: { paths: ['req.headers.authorization', 'headers.authorization', 'password', '*.password'], censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination as pino.DestinationStream | undefined,
  );
}
