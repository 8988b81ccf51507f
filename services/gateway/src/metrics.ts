import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** How often storage use is re-measured (a walk of the blob store) at most. */
const STORAGE_MEASURE_MS = 60_000;

async function directorySize(dir: string): Promise<number> {
  let total = 0;
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch {
    return 0;
  }
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) total += await directorySize(path);
    else if (entry.isFile()) total += (await stat(path).catch(() => undefined))?.size ?? 0;
  }
  return total;
}

/** Prometheus metrics of the appliance, as seen by the gateway (workers report cache hits in a header). */
export class GatewayMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<'upstream' | 'method' | 'status'>;
  readonly bytes: Counter<'upstream'>;
  readonly cache: Counter<'upstream' | 'result'>;
  readonly upstreamErrors: Counter<'upstream'>;
  private storageMeasuredAt = 0;
  private storageBytes = 0;

  constructor(blobsDir: string) {
    collectDefaultMetrics({ register: this.registry, prefix: 'stevedore_gateway_' });
    this.requests = new Counter({ name: 'stevedore_requests_total', help: 'Requests answered, by upstream ("-" = hosted), method and status', labelNames: ['upstream', 'method', 'status'], registers: [this.registry] });
    this.bytes = new Counter({ name: 'stevedore_response_bytes_total', help: 'Response body bytes sent to clients, by upstream', labelNames: ['upstream'], registers: [this.registry] });
    this.cache = new Counter({ name: 'stevedore_cache_requests_total', help: 'Pull-through cache lookups of manifests and blobs, by upstream and result (hit, miss)', labelNames: ['upstream', 'result'], registers: [this.registry] });
    this.upstreamErrors = new Counter({ name: 'stevedore_upstream_errors_total', help: 'Requests that failed because the upstream failed (502/503/504 from a cache worker)', labelNames: ['upstream'], registers: [this.registry] });
    const self = this;
    new Gauge({
      name: 'stevedore_storage_bytes', help: 'Bytes stored in the blob store (re-measured at most once a minute)', registers: [this.registry],
      async collect() {
        if (Date.now() - self.storageMeasuredAt > STORAGE_MEASURE_MS) {
          self.storageMeasuredAt = Date.now();
          self.storageBytes = await directorySize(blobsDir);
        }
        this.set(self.storageBytes);
      },
    });
  }
}
