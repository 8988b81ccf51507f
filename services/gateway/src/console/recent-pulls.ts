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

/** The last `bytes` of the log as whole lines ('' when there is no log). */
async function readTail(path: string, bytes: number): Promise<string> {
  let handle;
  try {
    handle = await open(path, 'r');
    const { size } = await handle.stat();
    const start = Math.max(0, size - bytes);
    const buffer = Buffer.alloc(size - start);
    await handle.read(buffer, 0, buffer.length, start);
    const text = buffer.toString('utf8');
    // The first line of a tail that does not start the file is partial.
    return start > 0 ? text.slice(text.indexOf('\n') + 1) : text;
  } catch {
    return '';
  } finally {
    await handle?.close();
  }
}

/** The newest access-log entries (newest first) matching `filter`, from the end of the log. */
export async function recentPulls(accessLogPath: string, filter: PullFilter): Promise<AccessLogEntry[]> {
  const text = await readTail(accessLogPath, TAIL_BYTES);
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

/** How much of the log's end the most-pulled ranking reads (about 25,000 entries). */
const RANKING_BYTES = 8 * 1024 * 1024;

export interface PulledImage {
  /** Upstream host, or "-" for the hosted registry. */
  upstream: string;
  repository: string;
  /** Successful manifest GETs (one a pull; an index pull counts its platform's manifest too). */
  pulls: number;
  /** Bytes of its manifests and blobs sent. */
  bytes: number;
  lastPulled: string;
}

/** The most pulled repositories in the log's last RANKING_BYTES, most pulls first. */
export async function mostPulled(accessLogPath: string, limit: number): Promise<{ since: string | undefined; items: PulledImage[] }> {
  const text = await readTail(accessLogPath, RANKING_BYTES);
  const byImage = new Map<string, PulledImage>();
  let since: string | undefined;
  for (const line of text.split('\n')) {
    const entry = parseAccessLogLine(line);
    if (!entry) continue;
    since ??= entry.time;
    if (!entry.repository || entry.method !== 'GET' || entry.status >= 300 || (entry.kind !== 'manifest' && entry.kind !== 'blob')) continue;
    const key = `${entry.upstream}\0${entry.repository}`;
    let image = byImage.get(key);
    if (!image) byImage.set(key, image = { upstream: entry.upstream, repository: entry.repository, pulls: 0, bytes: 0, lastPulled: entry.time });
    if (entry.kind === 'manifest') image.pulls++;
    image.bytes += entry.bytes;
    image.lastPulled = entry.time;
  }
  const items = [...byImage.values()].filter((i) => i.pulls > 0).sort((a, b) => b.pulls - a.pulls || b.bytes - a.bytes).slice(0, limit);
  return { since, items };
}
