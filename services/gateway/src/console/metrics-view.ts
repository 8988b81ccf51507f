import type { GatewayMetrics } from '../metrics.js';
import type { Totals } from './history.js';

/** What the gateway's own counters say of one upstream ("-" = the hosted registry), since it started. */
export interface UpstreamCounters {
  requests: number;
  bytesServed: number;
  hits: number;
  misses: number;
  bytesFromCache: number;
  bytesFetched: number;
  upstreamErrors: number;
  /** Requests other than GET and HEAD (pushes, deletes): they change what is stored. */
  writes: number;
}

function empty(): UpstreamCounters {
  return { requests: 0, bytesServed: 0, hits: 0, misses: 0, bytesFromCache: 0, bytesFetched: 0, upstreamErrors: 0, writes: 0 };
}

/**
 * Reads the prom-client counters behind /metrics (get() runs their collect hook, so pending
 * increments are included): the console shows the same numbers a scrape does.
 */
export async function readCounters(metrics: GatewayMetrics): Promise<Map<string, UpstreamCounters>> {
  const byUpstream = new Map<string, UpstreamCounters>();
  const row = (upstream: unknown): UpstreamCounters => {
    const key = String(upstream ?? '-');
    let found = byUpstream.get(key);
    if (!found) byUpstream.set(key, found = empty());
    return found;
  };
  const [requests, bytes, cache, cacheBytes, errors] = await Promise.all([
    metrics.requests.counter.get(), metrics.bytes.counter.get(), metrics.cache.counter.get(), metrics.cacheBytes.counter.get(), metrics.upstreamErrors.counter.get(),
  ]);
  for (const v of requests.values) {
    row(v.labels.upstream).requests += v.value;
    if (v.labels.method !== 'GET' && v.labels.method !== 'HEAD') row(v.labels.upstream).writes += v.value;
  }
  for (const v of bytes.values) row(v.labels.upstream).bytesServed += v.value;
  for (const v of cache.values) {
    if (v.labels.result === 'hit') row(v.labels.upstream).hits += v.value;
    else if (v.labels.result === 'miss') row(v.labels.upstream).misses += v.value;
  }
  for (const v of cacheBytes.values) {
    if (v.labels.result === 'hit') row(v.labels.upstream).bytesFromCache += v.value;
    else if (v.labels.result === 'miss') row(v.labels.upstream).bytesFetched += v.value;
  }
  for (const v of errors.values) row(v.labels.upstream).upstreamErrors += v.value;
  return byUpstream;
}

export function totalsOf(counters: Map<string, UpstreamCounters>): Totals {
  const t: Totals = { hits: 0, misses: 0, hitBytes: 0, missBytes: 0, errors: 0 };
  for (const [upstream, c] of counters) {
    if (upstream === '-') continue;
    t.hits += c.hits;
    t.misses += c.misses;
    t.hitBytes += c.bytesFromCache;
    t.missBytes += c.bytesFetched;
    t.errors += c.upstreamErrors;
  }
  return t;
}

/** A number that changes whenever the gateway may have stored or removed content (a cache fill, a push, a delete). */
export function storeChangeStamp(counters: Map<string, UpstreamCounters>): number {
  let stamp = 0;
  for (const c of counters.values()) stamp += c.misses + c.writes;
  return stamp;
}
