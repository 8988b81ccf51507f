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
  private pending = new Map<string, number>();
  /** Tags resolved since the last flush: a burst of pulls by tag reads each tag file once per batch. */
  private tags = new Map<string, Digest | undefined>();
  private readonly layouts = new Map<string, StorageLayout>();
  touched = 0;
  skipped = 0;

  constructor(private readonly root: string) {}

  private layout(upstream: string): StorageLayout | undefined {
    let layout = this.layouts.get(upstream);
    if (!layout) {
      if (upstream !== '-' && !NAMESPACE_PATTERN.test(upstream)) return undefined;
      layout = new StorageLayout(this.root, upstream === '-' ? {} : { namespace: upstream });
      this.layouts.set(upstream, layout);
    }
    return layout;
  }

  /** Queues the file an access-log entry served, if it served one. */
  async record(entry: AccessLogEntry): Promise<void> {
    const served = (entry.method === 'GET' || entry.method === 'HEAD') && ((entry.status >= 200 && entry.status < 300) || entry.status === 304);
    if (!served || !entry.reference || (entry.kind !== 'blob' && entry.kind !== 'manifest')) return;
    const layout = this.layout(entry.upstream);
    if (!layout) return;
    let digest = tryParseDigest(entry.reference);
    if (!digest && entry.kind === 'manifest' && entry.repository) {
      const key = `${entry.upstream}\0${entry.repository}\0${entry.reference}`;
      if (this.tags.has(key)) digest = this.tags.get(key);
      else if (isValidName(entry.repository) && isValidTag(entry.reference)) {
        const target = await readFile(layout.tagPath(entry.repository, entry.reference), 'utf8').catch(() => '');
        digest = tryParseDigest(target.trim());
        this.tags.set(key, digest);
      }
    }
    if (!digest) return;
    // A time in the future (a skewed clock, a hand-written line) would pin the blob until then.
    const now = Date.now();
    const parsed = Date.parse(entry.time);
    const time = Number.isFinite(parsed) ? Math.min(parsed, now) : now;
    const path = layout.blobPath(digest);
    this.pending.set(path, Math.max(this.pending.get(path) ?? 0, time));
  }

  /** Writes the queued atimes (mtime kept as it is). */
  async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = new Map();
    this.tags = new Map();
    for (const [path, time] of batch) {
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
