/**
 * The gateway's access log: one pino JSON line per request. The gateway writes it and the logger
 * service reads it (to record when each blob and manifest was last served), so its shape is a
 * contract: change it only together with both.
 */
export interface AccessLogEntry {
  /** pino's own fields: level and ISO time. */
  level: number;
  time: string;
  msg: typeof ACCESS_LOG_MESSAGE;
  /** Authenticated user name, or "-" when anonymous (auth disabled). */
  user: string;
  method: string;
  /** The request path as the client sent it (no query string). */
  path: string;
  /** Upstream host the request was routed to, or "-" for the hosted registry. */
  upstream: string;
  /** Repository name as the worker sees it (without the upstream prefix), when the path has one. */
  repository?: string;
  /** Manifest reference (tag or digest) or blob digest, when the path has one. */
  reference?: string;
  /** What `reference` names. */
  kind?: 'manifest' | 'blob' | 'upload' | 'tags' | 'referrers' | 'catalog' | 'base' | 'other';
  status: number;
  bytes: number;
  durationMs: number;
}

export const ACCESS_LOG_MESSAGE = 'access';

/** Parses one access-log line; undefined for anything that is not a well-formed entry. */
export function parseAccessLogLine(line: string): AccessLogEntry | undefined {
  if (!line.startsWith('{')) return undefined;
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return undefined;
  }
  const entry = value as Partial<AccessLogEntry>;
  if (entry.msg !== ACCESS_LOG_MESSAGE || typeof entry.method !== 'string' || typeof entry.status !== 'number'
    || typeof entry.upstream !== 'string' || typeof entry.path !== 'string') return undefined;
  return entry as AccessLogEntry;
}
