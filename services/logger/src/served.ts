import type { AccessLogEntry } from '../../../lib/access-log.js';
import { tryParseDigest, type Digest } from '../../../lib/oci/digest.js';
import { isValidName, isValidTag } from '../../../lib/oci/reference.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { tagTarget } from '../../../lib/storage/inventory.js';
import { NAMESPACE_PATTERN, StorageLayout } from '../../../lib/storage/layout.js';
import { ServedBatchWriter } from '../../../lib/storage/served-index.js';

/** How long a resolved tag is reused (see ServedRecorder.tags). */
const TAG_RECHECK_MS = 10_000;

/**
 * Turns served requests into "last served" times in the store's served index
 * (lib/storage/served-index.ts): one batch object per flush holding the latest time of every
 * digest served since the last flush, so a burst of thousands of requests costs one PUT.
 */
export class ServedRecorder {
  /** Digest → the latest time it was served, by the entries' own times. */
  private pending = new Map<string, number>();
  /**
   * Tags resolved, kept TAG_RECHECK_MS: a burst of pulls by tag reads each tag once (on S3 a GET),
   * not once per line or per flush; a tag moved meanwhile credits its old manifest for that long.
   */
  private tags = new Map<string, Digest | undefined>();
  private tagsAt = Date.now();
  /** Tag reads in flight: concurrent lines for one tag share one read. */
  private readonly resolving = new Map<string, Promise<Digest | undefined>>();
  private readonly layouts = new Map<string, StorageLayout>();
  private readonly writer: ServedBatchWriter;
  /** Digests written to the index so far (one per digest and batch). */
  recorded = 0;
  /** Batches written. */
  batches = 0;

  constructor(private readonly driver: StorageDriver, instanceId?: string) {
    this.writer = new ServedBatchWriter(driver, instanceId);
  }

  get instanceId(): string {
    return this.writer.instanceId;
  }

  private layout(upstream: string): StorageLayout | undefined {
    let layout = this.layouts.get(upstream);
    if (!layout) {
      if (upstream !== '-' && !NAMESPACE_PATTERN.test(upstream)) return undefined;
      layout = new StorageLayout('', upstream === '-' ? {} : { namespace: upstream });
      this.layouts.set(upstream, layout);
    }
    return layout;
  }

  /**
   * Queues the digest an access-log entry served, if it served one. Returns a promise only while a
   * tag is being read (once per tag per TAG_RECHECK_MS); every other line costs no I/O here.
   */
  record(entry: AccessLogEntry): Promise<void> | undefined {
    const served = (entry.method === 'GET' || entry.method === 'HEAD') && ((entry.status >= 200 && entry.status < 300) || entry.status === 304);
    if (!served || !entry.reference || (entry.kind !== 'blob' && entry.kind !== 'manifest')) return undefined;
    const layout = this.layout(entry.upstream);
    if (!layout) return undefined;
    const digest = tryParseDigest(entry.reference);
    if (digest) return void this.queue(digest, entry.time);
    if (entry.kind !== 'manifest' || !entry.repository) return undefined;
    const key = `${entry.upstream}\0${entry.repository}\0${entry.reference}`;
    if (this.tags.has(key)) {
      const tagged = this.tags.get(key);
      if (tagged) this.queue(tagged, entry.time);
      return undefined;
    }
    let resolving = this.resolving.get(key);
    if (!resolving) {
      if (!isValidName(entry.repository) || !isValidTag(entry.reference)) return undefined;
      resolving = this.driver.getContent(layout.tagKey(entry.repository, entry.reference)).then((data) => tagTarget(data.toString('utf8')), () => undefined);
      const pending = resolving;
      void pending.then((tagged) => {
        if (this.resolving.get(key) === pending) this.resolving.delete(key);
        this.tags.set(key, tagged);
      });
      this.resolving.set(key, pending);
    }
    const time = entry.time;
    return resolving.then((tagged) => { if (tagged) this.queue(tagged, time); });
  }

  private queue(digest: Digest, time: string): void {
    const parsed = Date.parse(time);
    // A time in the future (a skewed clock, a hand-written line) would pin the blob until then.
    const ms = Math.min(Number.isFinite(parsed) ? parsed : Date.now(), Date.now());
    const pending = this.pending.get(digest.value);
    if (pending === undefined || ms > pending) this.pending.set(digest.value, ms);
  }

  /** Writes the queued times as one batch (nothing when nothing was served). */
  async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = new Map();
    if (Date.now() - this.tagsAt >= TAG_RECHECK_MS) {
      this.tags = new Map();
      this.tagsAt = Date.now();
    }
    try {
      if (await this.writer.write(batch)) {
        this.batches++;
        this.recorded += batch.size;
      }
    } catch (err) {
      // Not lost: merged back, written with the next flush (the saved log position stays behind it).
      for (const [digest, ms] of batch) if ((this.pending.get(digest) ?? -Infinity) < ms) this.pending.set(digest, ms);
      throw err;
    }
  }
}
