import { open } from 'node:fs/promises';
import { parseAccessLogLine, type AccessLogEntry } from '../../../../lib/access-log.js';

/** How much of the access log's end is read for recent requests (about 1,500 entries). */
const TAIL_BYTES = 512 * 1024;

export interface PullFilter {
  /** Substring of the repository, path or user (case-insensitive). */
  q?: string;
  user?: string;
  /** An upstream host, or "-" for the hosted registry. */
  upstream?: string;
  /** "2xx", "4xx", "5xx" or an exact status. */
  status?: string;
  /** Manifest and blob requests only (pulls and their parts), unless false. */
  contentOnly?: boolean;
  limit: number;
}

function statusMatches(status: number, filter: string): boolean {
  if (/^[1-5]xx$/i.test(filter)) return Math.floor(status / 100) === Number(filter[0]);
  return String(status) === filter;
}

/** The newest access-log entries (newest first) matching `filter`, from the end of the log. */
export async function recentPulls(accessLogPath: string, filter: PullFilter): Promise<AccessLogEntry[]> {
  let text: string;
  let handle;
  try {
    handle = await open(accessLogPath, 'r');
    const { size } = await handle.stat();
    const start = Math.max(0, size - TAIL_BYTES);
    const buffer = Buffer.alloc(size - start);
    await handle.read(buffer, 0, buffer.length, start);
    text = buffer.toString('utf8');
    // The first line of a tail that does not start the file is partial.
    if (start > 0) text = text.slice(text.indexOf('\n') + 1);
  } catch {
    return [];
  } finally {
    await handle?.close();
  }
  const q = filter.q?.toLowerCase();
  const out: AccessLogEntry[] = [];
  const lines = text.split('\n');
  for (let i = lines.length - 1; i >= 0 && out.length < filter.limit; i--) {
    const entry = parseAccessLogLine(lines[i]!);
    if (!entry) continue;
    if (filter.contentOnly !== false && entry.kind !== 'manifest' && entry.kind !== 'blob') continue;
    if (filter.user && entry.user !== filter.user) continue;
    if (filter.upstream && entry.upstream !== filter.upstream) continue;
    if (filter.status && !statusMatches(entry.status, filter.status)) continue;
    if (q && !`${entry.repository ?? ''} ${entry.path} ${entry.user}`.toLowerCase().includes(q)) continue;
    out.push(entry);
  }
  return out;
}
