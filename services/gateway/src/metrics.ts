import { dirname } from 'node:path';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../lib/storage/driver/filesystem.js';
import { listBlobs } from '../../../lib/storage/inventory.js';
import { Counter, Gauge, Registry, collectDefaultMetrics, type CounterConfiguration, type LabelValues } from 'prom-client';

/** How often storage use is re-measured (a walk of the blob store) at most. */
const STORAGE_MEASURE_MS = 60_000;

/** Bytes of every blob of the store (one listing: on S3 ~1 LIST per 1,000 blobs). */
async function storedBytes(driver: StorageDriver): Promise<number> {
  let total = 0;
  for (const blob of await listBlobs(driver)) total += blob.size;
  return total;
}

/**
 * A prom-client Counter whose increments are summed in a plain Map and handed to prom-client when
 * it is scraped (its collect hook): prom-client's own inc() hashes the label object on every call,
 * a few microseconds per request on the gateway's hot path. Scrapes see every increment made before them.
 */
export class BufferedCounter<L extends string> {
  readonly counter: Counter<L>;
  private readonly pending = new Map<string, { labels: LabelValues<L>; value: number }>();
  private readonly labelNames: readonly L[];

  constructor(config: CounterConfiguration<L>) {
    const self = this;
    this.labelNames = config.labelNames ?? [];
    this.counter = new Counter<L>({ ...config, collect() { self.flush(); } });
  }

  inc(labels: LabelValues<L>, value = 1): void {
    let key = '';
    for (const name of this.labelNames) key += `${labels[name]}\0`;
    const entry = this.pending.get(key);
    if (entry) entry.value += value;
    else this.pending.set(key, { labels, value });
  }

  private flush(): void {
    for (const { labels, value } of this.pending.values()) this.counter.inc(labels, value);
    this.pending.clear();
  }
}

/** Prometheus metrics of the appliance, as seen by the gateway (workers report cache hits in a header). */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests: BufferedCounter<'upstream' | 'method' | 'status'>;
  readonly bytes: BufferedCounter<'upstream'>;
  readonly cache: BufferedCounter<'upstream' | 'result'>;
  readonly cacheBytes: BufferedCounter<'upstream' | 'result'>;
  readonly upstreamErrors: BufferedCounter<'upstream'>;
  private storageMeasuredAt = 0;
  private storageBytes = 0;

  /** `store`: the storage driver, or (older callers) the filesystem store's `blobs` directory. */
  constructor(store: StorageDriver | string) {
    const driver = typeof store === 'string' ? new FilesystemDriver(dirname(store)) : store;
    collectDefaultMetrics({ register: this.registry, prefix: 'stevedore_gateway_' });
    this.requests = new BufferedCounter({ name: 'stevedore_requests_total', help: 'Requests answered, by upstream ("-" = hosted), method and status', labelNames: ['upstream', 'method', 'status'], registers: [this.registry] });
    this.bytes = new BufferedCounter({ name: 'stevedore_response_bytes_total', help: 'Response body bytes sent to clients, by upstream', labelNames: ['upstream'], registers: [this.registry] });
    this.cache = new BufferedCounter({ name: 'stevedore_cache_requests_total', help: 'Pull-through cache lookups of manifests and blobs, by upstream and result (hit, miss)', labelNames: ['upstream', 'result'], registers: [this.registry] });
    this.cacheBytes = new BufferedCounter({ name: 'stevedore_cache_response_bytes_total', help: 'Response body bytes of pull-through cache lookups, by upstream and result: hit = served from the cache, miss = fetched upstream (traffic saved = hit bytes)', labelNames: ['upstream', 'result'], registers: [this.registry] });
    this.upstreamErrors = new BufferedCounter({ name: 'stevedore_upstream_errors_total', help: 'Requests that failed because the upstream failed (502/503/504 from a cache worker)', labelNames: ['upstream'], registers: [this.registry] });
    const self = this;
    new Gauge({
      name: 'stevedore_storage_bytes', help: 'Bytes stored in the blob store (re-measured at most once a minute)', registers: [this.registry],
      async collect() {
        if (Date.now() - self.storageMeasuredAt > STORAGE_MEASURE_MS) {
          self.storageMeasuredAt = Date.now();
          self.storageBytes = await storedBytes(driver).catch(() => self.storageBytes);
        }
        this.set(self.storageBytes);
      },
    });
  }
}
