import { readFile, stat, utimes } from 'node:fs/promises';
import type { AccessLogEntry } from '../../../lib/access-log.js';
import { tryParseDigest, type Digest } from '../../../lib/oci/digest.js';
import { isValidName, isValidTag } from '../../../lib/oci/reference.js';
import { NAMESPACE_PATTERN, StorageLayout } from '../../../lib/storage/layout.js';

/**
 * Turns served requests into "last served" times: the atime of each blob file (manifests are
 * stored as blobs too), set explicitly so it means the same whatever the mount's atime options.
 * Requests are batched: a burst of thousands costs one stat+utimes per distinct file per flush.
 */
export class AtimeToucher {
  /** Digest → the latest time it was served, by the entries' own times. */
  private pending = new Map<string, { digest: Digest; time: number }>();
  /** Tags resolved since the last flush: a burst of pulls by tag reads each tag file once per batch. */
  private tags = new Map<string, Digest | undefined>();
  private readonly layouts = new Map<string, StorageLayout>();
  touched = 0;
  skipped = 0;

  private readonly blobs: StorageLayout;

  constructor(private readonly root: string) {
    this.blobs = new StorageLayout(root);
  }

  private layout(upstream: string): StorageLayout | undefined {
    let layout = this.layouts.get(upstream);
    if (!layout) {
      if (upstream !== '-' && !NAMESPACE_PATTERN.test(upstream)) return undefined;
      layout = new StorageLayout(this.root, upstream === '-' ? {} : { namespace: upstream });
      this.layouts.set(upstream, layout);
    }
    return layout;
  }

  /**
   * Queues the file an access-log entry served, if it served one. Returns a promise only when a
   * tag file has to be read (once per tag and batch); every other line costs no I/O here.
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
    if (!isValidName(entry.repository) || !isValidTag(entry.reference)) return undefined;
    return readFile(layout.tagPath(entry.repository, entry.reference), 'utf8').catch(() => '').then((target) => {
      const tagged = tryParseDigest(target.trim());
      this.tags.set(key, tagged);
      if (tagged) this.queue(tagged, entry.time);
    });
  }

  /** Blob files are shared by every store (one per digest), so the digest alone names the file. */
  private queue(digest: Digest, time: string): void {
    const parsed = Date.parse(time);
    const pending = this.pending.get(digest.value);
    if (!pending) this.pending.set(digest.value, { digest, time: Number.isFinite(parsed) ? parsed : Date.now() });
    else if (parsed > pending.time) pending.time = parsed;
  }

  /** Writes the queued atimes (mtime kept as it is). */
  async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = new Map();
    this.tags = new Map();
    const now = Date.now();
    for (const { digest, time: served } of batch.values()) {
      // A time in the future (a skewed clock, a hand-written line) would pin the blob until then.
      const time = Math.min(served, now);
      const path = this.blobs.blobPath(digest);
      const info = await stat(path).catch(() => undefined);
      if (!info) {
        this.skipped++;
        continue;
      }
      if (info.atimeMs >= time) continue;
      await utimes(path, new Date(time), info.mtime).catch(() => { this.skipped++; });
      this.touched++;
    }
  }
}
