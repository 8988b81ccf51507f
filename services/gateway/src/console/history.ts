import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../../../../lib/storage/atomic.js';

/**
 * One minute of the appliance, summed over upstreams: cache lookups and the bytes they sent, and
 * storage at the time. Stored as arrays (compact on disk and for the charts):
 * [time ms, hits, misses, bytes served from cache, bytes fetched upstream, upstream errors, cached bytes, hosted bytes].
 */
export type HistoryPoint = [number, number, number, number, number, number, number, number];

/** Counter totals since the gateway started (they restart at 0 with it). */
export interface Totals {
  hits: number;
  misses: number;
  hitBytes: number;
  missBytes: number;
  errors: number;
}

/** One point a minute for 48 hours: ~200 KB on disk. */
export const HISTORY_INTERVAL_MS = 60_000;
export const HISTORY_MAX_POINTS = 48 * 60;

export function historyPath(root: string): string {
  return join(root, 'logs', 'console-history.json');
}

/**
 * The console's charts' data: a bounded series kept in the data directory, so it survives
 * restarts. A point holds the counters' increase since the previous point; after a restart the
 * counters start at 0 again, which is also the baseline the first new point is taken against.
 */
export class ConsoleHistory {
  private points: HistoryPoint[] = [];
  private baseline: Totals = { hits: 0, misses: 0, hitBytes: 0, missBytes: 0, errors: 0 };
  private timer: NodeJS.Timeout | undefined;
  private loaded: Promise<void> | undefined;

  constructor(private readonly root: string, private readonly totals: () => Promise<Totals>, private readonly storage: () => Promise<{ cached: number; hosted: number }>) {}

  load(): Promise<void> {
    this.loaded ??= readFile(historyPath(this.root), 'utf8').then((raw) => {
      const value = JSON.parse(raw) as { points?: unknown };
      if (Array.isArray(value.points)) this.points = value.points.filter((p): p is HistoryPoint => Array.isArray(p) && p.length === 8 && p.every((n) => typeof n === 'number')).slice(-HISTORY_MAX_POINTS);
    }).catch(() => {});
    return this.loaded;
  }

  /** Takes a point now and then every HISTORY_INTERVAL_MS. */
  start(onError: (err: unknown) => void): void {
    const tick = () => { this.sample().catch(onError); };
    void this.load().then(tick);
    this.timer = setInterval(tick, HISTORY_INTERVAL_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async point(advance: boolean): Promise<HistoryPoint> {
    const [now, storage] = await Promise.all([this.totals(), this.storage()]);
    const b = this.baseline;
    if (advance) this.baseline = now;
    return [Date.now(), now.hits - b.hits, now.misses - b.misses, now.hitBytes - b.hitBytes, now.missBytes - b.missBytes, now.errors - b.errors, storage.cached, storage.hosted];
  }

  async sample(): Promise<void> {
    await this.load();
    this.points.push(await this.point(true));
    if (this.points.length > HISTORY_MAX_POINTS) this.points.splice(0, this.points.length - HISTORY_MAX_POINTS);
    await writeFileAtomic(join(this.root, '_tmp', '_console'), historyPath(this.root), JSON.stringify({ intervalMs: HISTORY_INTERVAL_MS, points: this.points }));
  }

  /** The stored points since `sinceMs`, and a last one for the minute in progress. */
  async series(sinceMs = 0): Promise<HistoryPoint[]> {
    await this.load();
    return [...this.points.filter((p) => p[0] >= sinceMs), await this.point(false)];
  }
}
