import { tryParseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import type { Reference } from '../oci/reference.js';
import { BoundedMap } from './bounded-map.js';
import { FreshReads } from './fresh-reads.js';
import { isStorageNotFound, type StorageDriver } from './driver/driver.js';
import type { StorageLayout } from './layout.js';

/**
 * Tags and revision links are re-read from the store at most this often: other processes (garbage
 * collection, the cleaner, seeding, the workers for the gateway) may change them. A process's own
 * writes update its cache at once; invalidate() drops what it knows of a repository another
 * process just wrote.
 */
export const RECHECK_MS = 1_000;
/** Manifest bodies up to this size are kept in memory (they are immutable, keyed by digest)... */
const CACHED_BODY_MAX = 256 * 1024;
/** ...up to this many bytes in all. */
const CACHED_BODIES_BYTES = 32 * 1024 * 1024;

/** How a reader caches mutable facts (tags, revision existence). */
export interface ReaderCaching {
  /**
   * How long a tag or revision read from the store is trusted: RECHECK_MS by default; 0 on a store
   * other appliances write too (config isSharedStore), where only immutable bodies are kept.
   */
  recheckMs: number;
}

export interface StoredManifest {
  digest: Digest;
  mediaType: string;
  body: Buffer;
}

/** What a tag key says: the digest it points at and when it was written or last confirmed upstream (its modified time). */
export interface TagState {
  digest: Digest;
  validatedAt: number;
}

/** A cached fact, with the read that produced it: `seq` orders it against invalidations. */
interface Checked<T> {
  value: T;
  checkedAt: number;
  seq: number;
}

/** A small key's content as text, or undefined when it does not exist. */
export async function readIfExists(driver: StorageDriver, key: string): Promise<string | undefined> {
  try {
    return (await driver.getContent(key)).toString('utf8');
  } catch (err) {
    if (isStorageNotFound(err)) return undefined;
    throw err;
  }
}

/**
 * Reads the manifests of one store (hosted, or one cache namespace) through the shared layout,
 * with small in-memory caches. The registry worker's ManifestStore adds the writes; the gateway
 * uses it alone to answer manifest GET/HEAD without the second hop.
 */
export class ManifestReader {
  protected readonly tags = new BoundedMap<string, Checked<TagState>>(50_000);
  protected readonly revisions = new BoundedMap<string, Checked<string>>(50_000);
  private readonly bodies = new BoundedMap<string, Buffer>(20_000, { maxWeight: CACHED_BODIES_BYTES, weigh: (b) => b.length });
  /** Repository → the invalidation's sequence number and time (kept for RECHECK_MS: older entries are rechecked anyway). */
  private readonly invalidations = new Map<string, { seq: number; at: number }>();
  private seq = 0;
  /** Store reads of tags and revisions in flight, shared by the requests that arrived before they began. */
  private readonly tagReads = new FreshReads<TagState | undefined>();
  private readonly revisionReads = new FreshReads<string | undefined>();

  private readonly recheckMs: number;

  constructor(readonly driver: StorageDriver, readonly layout: StorageLayout, caching: ReaderCaching = { recheckMs: RECHECK_MS }) {
    this.recheckMs = caching.recheckMs;
  }

  /** A cache entry for a read starting now. */
  protected stamp<T>(value: T, checkedAt = Date.now()): Checked<T> {
    return { value, checkedAt, seq: ++this.seq };
  }

  private isFresh(name: string, entry: Checked<unknown> | undefined): boolean {
    if (!entry || Date.now() - entry.checkedAt >= this.recheckMs) return false;
    const invalidated = this.invalidations.get(name);
    return !invalidated || invalidated.seq < entry.seq;
  }

  /** Forgets what is cached about repository `name`'s tags and revisions: another process just changed them. */
  invalidate(name: string): void {
    const now = Date.now();
    this.invalidations.delete(name);
    this.invalidations.set(name, { seq: ++this.seq, at: now });
    for (const [key, { at }] of this.invalidations) {
      if (now - at < RECHECK_MS) break;
      this.invalidations.delete(key);
    }
  }

  /** readTag() from memory alone: undefined when not cached or due for a recheck. */
  peekTag(name: string, tag: string): TagState | undefined {
    const cached = this.tags.get(`${name}\0${tag}`);
    return this.isFresh(name, cached) ? cached!.value : undefined;
  }

  /** find() by digest from memory alone: undefined when any part is not cached or due for a recheck. */
  peek(name: string, digest: Digest): StoredManifest | undefined {
    const revision = this.revisions.get(`${name}\0${digest.value}`);
    if (!this.isFresh(name, revision)) return undefined;
    const body = this.bodies.get(digest.value);
    return body ? { digest, mediaType: revision!.value, body } : undefined;
  }

  /** The tag's digest and when it was last written or confirmed upstream, or undefined. */
  async readTag(name: string, tag: string): Promise<TagState | undefined> {
    const key = `${name}\0${tag}`;
    const cached = this.tags.get(key);
    if (this.isFresh(name, cached)) return cached!.value;
    return this.tagReads.read(key, () => this.loadTag(name, tag));
  }

  private async loadTag(name: string, tag: string): Promise<TagState | undefined> {
    const key = `${name}\0${tag}`;
    const entry = this.stamp<TagState | undefined>(undefined);
    try {
      // Content and write time in one request: the write time is when the tag was last validated.
      const { data, modifiedAt } = await this.driver.getVersioned(this.layout.tagKey(name, tag));
      const digest = tryParseDigest(data.toString('utf8').trim());
      if (digest) entry.value = { digest, validatedAt: modifiedAt.getTime() };
    } catch (err) {
      if (!isStorageNotFound(err)) throw err;
    }
    if (entry.value) this.tags.set(key, entry as Checked<TagState>);
    else this.tags.delete(key);
    return entry.value;
  }

  async resolveTag(name: string, tag: string): Promise<Digest | undefined> {
    return (await this.readTag(name, tag))?.digest;
  }

  /** The media type of manifest `digest` in repository `name`, or undefined if it has no such revision. */
  async revisionMediaType(name: string, digest: Digest): Promise<string | undefined> {
    const key = `${name}\0${digest.value}`;
    const cached = this.revisions.get(key);
    if (this.isFresh(name, cached)) return cached!.value;
    return this.revisionReads.read(key, async () => {
      const entry = this.stamp('');
      entry.value = (await readIfExists(this.driver, this.layout.manifestRevisionKey(name, digest)))?.trim() ?? '';
      if (entry.value) this.revisions.set(key, entry);
      else this.revisions.delete(key);
      return entry.value || undefined;
    });
  }

  /** A manifest's bytes (stored as a blob), or undefined if the blob is gone. */
  async body(digest: Digest): Promise<Buffer | undefined> {
    const cached = this.bodies.get(digest.value);
    if (cached) return cached;
    let body: Buffer;
    try {
      body = await this.driver.getContent(this.layout.blobKey(digest));
    } catch (err) {
      if (isStorageNotFound(err)) return undefined;
      throw err;
    }
    this.rememberBody(digest, body);
    return body;
  }

  protected rememberBody(digest: Digest, body: Buffer): void {
    if (body.length <= CACHED_BODY_MAX) this.bodies.set(digest.value, body);
  }

  /** The manifest a reference names in repository `name`, or undefined (no such tag, revision or file). */
  async find(name: string, reference: Reference): Promise<StoredManifest | undefined> {
    let digest: Digest | undefined;
    let mediaTypeRead: Promise<string | undefined> | undefined;
    if (reference.kind === 'tag') {
      // The tag usually still points where it did: that revision is read alongside the tag (both read
      // after this request arrived), so a per-request read of both costs one store round trip, not two.
      const previous = this.tags.get(`${name}\0${reference.tag}`)?.value.digest;
      const speculative = previous && this.revisionMediaType(name, previous);
      speculative?.catch(() => {});
      digest = await this.resolveTag(name, reference.tag);
      if (speculative && digest?.value === previous!.value) mediaTypeRead = speculative;
    } else digest = reference.digest;
    if (!digest) return undefined;
    const mediaType = await (mediaTypeRead ?? this.revisionMediaType(name, digest));
    if (!mediaType) return undefined;
    const body = await this.body(digest);
    return body ? { digest, mediaType, body } : undefined;
  }

  /** As find(), but a missing manifest is MANIFEST_UNKNOWN. */
  async get(name: string, reference: Reference): Promise<StoredManifest> {
    const manifest = await this.find(name, reference);
    if (!manifest) throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: reference.kind === 'tag' ? reference.tag : reference.digest.value });
    return manifest;
  }
}
