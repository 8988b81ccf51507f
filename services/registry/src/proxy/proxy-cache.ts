import type { FastifyReply, FastifyRequest } from 'fastify';
import { digestOf, parseDigest, tryParseDigest, type Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { MANIFEST_MEDIA_TYPES, MediaType } from '../../../../lib/oci/media-types.js';
import { isValidTag, type Reference } from '../../../../lib/oci/reference.js';
import { parseRange } from '../../../../lib/http/range.js';
import { upstreamRepository } from '../../../../lib/upstreams.js';
import { Readable } from 'node:stream';
import { CACHE_RESULT_HEADER, FILL_SPOOL_HEADER, PEER_FILL_HEADER } from '../../../../lib/appliance.js';
import type { HeldLease } from '../../../../lib/storage/lease.js';
import type { RegistryContext } from '../context.js';
import { getBlob, rangeNotSatisfiable, sendBlobHeaders } from '../routes/blobs.js';
import { paginate, parsePagination } from '../routes/http.js';
import { TAGS_PAGE_CAP } from '../routes/listings.js';
import { sendManifest } from '../routes/manifests.js';
import { BoundedMap } from '../../../../lib/storage/bounded-map.js';
import type { StoredManifest } from '../../../../lib/storage/manifest-store.js';
import { storeFlight, type StoreFlightOptions } from '../../../../lib/storage/store-flight.js';
import { BlobFills, type BlobFill } from './blob-fill.js';
import { SharedFills, type PeerSettings } from './shared-fill.js';
import { readBodyCapped, responseHeader, type UpstreamClient, type UpstreamResponse } from './upstream-client.js';

export interface ProxyOptions {
  tagTtlMs: number;
  negativeTtlMs: number;
  fillTimeoutMs: number;
  /** `n` asked of the upstream for each page of a tag list; undefined: the upstream's own page size. */
  upstreamTagsPageSize?: number;
  /** Other appliances fill from the same store (STEVEDORE_SHARED_STORE): blob fills are coordinated through it. */
  shared?: PeerSettings;
  /** For requests to peer appliances (default 30 s). */
  upstreamTimeoutMs?: number;
  /**
   * Other appliances share the store (STEVEDORE_SHARED_STORE): manifest fetches and tag revalidations
   * are then made once across all of them, coordinated by store leases (lib/storage/store-flight.ts).
   * Off, no lease is ever read or written: a single appliance pays nothing for it.
   */
  sharedStore?: boolean;
  /** Time to live of those leases (renewed while the fetch runs); default 30 s. */
  fillLeaseMs?: number;
  /** Longest wait for another appliance's live flight before fetching anyway; default: fillLeaseMs. */
  fillWaitMs?: number;
}

const MANIFEST_ACCEPT = [...MANIFEST_MEDIA_TYPES].join(', ');
/** Upstream manifests and listings larger than this are refused rather than buffered. */
const MAX_UPSTREAM_DOCUMENT = 16 * 1024 * 1024;
/** Default time to live of a manifest or tag flight's lease across appliances. */
const FILL_LEASE_MS = 30_000;
/**
 * A tag's validatedAt is its key's write time, which S3 reports to the second: a validation made
 * this much before a flight began may read as older than it is, yet it is that flight's answer.
 */
const STORE_TIME_GRANULARITY_MS = 1_000;
/** Referrers from upstream are reused for this long. */
const LIST_TTL_MS = 30_000;
/** An upstream tag list is followed through at most this many pages (Link: rel="next") and tags. */
const MAX_TAG_PAGES = 100;
const MAX_TAGS = 100_000;

/** A manifest as served: `fromUpstream` when this request had to fetch it (a cache miss). */
type ServedManifest = StoredManifest & { fromUpstream?: boolean };

/** Upstream failures after which a cached (possibly stale) copy is better than an error. */
function canServeStale(err: unknown): boolean {
  return err instanceof RegistryError && !['MANIFEST_UNKNOWN', 'BLOB_UNKNOWN', 'NAME_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_INVALID'].includes(err.code);
}

/** The valid tags of an upstream tag-list page (`{"name":…,"tags":[…]}`; `tags` may be null). */
function parseTagList(body: Buffer, host: string): string[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    parsed = undefined;
  }
  const tags = typeof parsed === 'object' && parsed !== null ? (parsed as { tags?: unknown }).tags : undefined;
  if (tags === null) return [];
  if (!Array.isArray(tags)) {
    throw new RegistryError('UNAVAILABLE', { upstream: host }, { status: 502, message: `upstream ${host} sent a tag list that is not {"tags":[...]}` });
  }
  return tags.filter((tag): tag is string => typeof tag === 'string' && isValidTag(tag));
}

/** An upstream manifest or listing, at most MAX_UPSTREAM_DOCUMENT bytes. */
function readCapped(res: UpstreamResponse): Promise<Buffer> {
  return readBodyCapped(res, MAX_UPSTREAM_DOCUMENT, () => new RegistryError('SIZE_INVALID', { limit: MAX_UPSTREAM_DOCUMENT }, { status: 502, message: 'upstream document too large' }));
}

/** The headers of a blob being filled (a miss), for the client's Range; which bytes to send. */
function sendFillHeaders(req: FastifyRequest, reply: FastifyReply, digest: Digest, size: number): { start: number; end: number } {
  const range = parseRange(req.headers.range, size);
  if (range.kind === 'unsatisfiable') throw rangeNotSatisfiable(req.headers.range, size);
  const start = range.kind === 'partial' ? range.range.start : 0;
  const end = range.kind === 'partial' ? range.range.end : size - 1;
  sendBlobHeaders(reply, digest);
  reply.header(CACHE_RESULT_HEADER, 'miss');
  if (range.kind === 'partial') reply.code(206).header('content-range', `bytes ${start}-${end}/${size}`);
  else reply.code(200);
  reply.header('content-length', end - start + 1);
  return { start, end };
}

interface CachedList {
  body: Buffer;
  contentType: string;
  headers: Record<string, string>;
  expiresAt: number;
}

/**
 * The pull-through cache of one upstream: answers from the store when it can, fills it from the
 * upstream on a miss (one upstream request per manifest or blob however many clients ask at once),
 * revalidates tags after their TTL, and serves cached content when the upstream is failing.
 */
export class ProxyCache {
  private readonly fills: BlobFills;
  private readonly negative = new BoundedMap<string, number>(10_000);
  private readonly manifestFetches = new Map<string, Promise<ServedManifest>>();
  private readonly lists = new BoundedMap<string, CachedList>(1_000);
  /** The last complete tag list fetched per repository: served only when the upstream can't answer. */
  private readonly tagLists = new BoundedMap<string, string[]>(1_000);
  private readonly tagFetches = new Map<string, Promise<string[] | undefined>>();

  private readonly shared: SharedFills | undefined;

  constructor(private readonly ctx: RegistryContext, readonly client: UpstreamClient, private readonly options: ProxyOptions) {
    this.fills = new BlobFills(options.fillTimeoutMs);
    this.shared = options.shared && new SharedFills(
      ctx, options.shared, client.endpoint.host,
      (name, digest, lease) => this.startFill(name, digest, lease), (digest) => this.fills.get(digest),
      options.upstreamTimeoutMs ?? 30_000,
    );
    if (options.shared && !options.shared.url) {
      ctx.log.warn('shared store without STEVEDORE_PEER_URL: other appliances wait for the whole blob of a fill this one runs instead of streaming it');
    }
  }

  private get host(): string {
    return this.client.endpoint.host;
  }

  private path(name: string, suffix: string): string {
    return `/v2/${upstreamRepository(this.client.endpoint, name)}/${suffix}`;
  }

  private scope(name: string): string {
    return `repository:${upstreamRepository(this.client.endpoint, name)}:pull`;
  }

  private isNegative(key: string): boolean {
    const until = this.negative.get(key);
    if (until === undefined) return false;
    if (until > Date.now()) return true;
    this.negative.delete(key);
    return false;
  }

  private rememberMissing(key: string): void {
    if (this.options.negativeTtlMs > 0) this.negative.set(key, Date.now() + this.options.negativeTtlMs);
  }

  /** Maps an upstream's non-success status to the error the client gets. */
  private mapStatus(res: UpstreamResponse, kind: 'manifest' | 'blob' | 'name', detail: Record<string, unknown>): RegistryError {
    const where = `upstream ${this.host}`;
    switch (res.status) {
      case 404:
        if (kind === 'manifest') return new RegistryError('MANIFEST_UNKNOWN', detail, { message: `manifest unknown to ${where}` });
        if (kind === 'blob') return new RegistryError('BLOB_UNKNOWN', detail, { message: `blob unknown to ${where}` });
        return new RegistryError('NAME_UNKNOWN', detail, { message: `repository unknown to ${where}` });
      case 401:
        return new RegistryError('UNAUTHORIZED', detail, { message: `${where} requires other credentials` });
      case 403:
        return new RegistryError('DENIED', detail, { message: `${where} denied access` });
      case 429: {
        const retryAfter = responseHeader(res.headers, 'retry-after');
        return new RegistryError('TOOMANYREQUESTS', detail, {
          message: `${where} is rate-limiting requests`, headers: retryAfter ? { 'retry-after': retryAfter } : {},
        });
      }
      default:
        return new RegistryError('UNAVAILABLE', { ...detail, upstreamStatus: res.status }, {
          status: res.status >= 500 ? 503 : 502, message: `${where} answered ${res.status}`,
        });
    }
  }

  // ---- manifests -------------------------------------------------------------------------------

  async getManifest(name: string, ref: string, reference: Reference, req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const manifest = await this.manifest(name, reference);
    reply.header(CACHE_RESULT_HEADER, manifest.fromUpstream ? 'miss' : 'hit');
    sendManifest(manifest, name, ref, req, reply);
  }

  private async local(name: string, reference: Reference): Promise<StoredManifest | undefined> {
    try {
      return await this.ctx.manifests.get(name, reference);
    } catch (err) {
      if (err instanceof RegistryError && err.code === 'MANIFEST_UNKNOWN') return undefined;
      throw err;
    }
  }

  private dedupe(key: string, fetch: () => Promise<ServedManifest>): Promise<ServedManifest> {
    let pending = this.manifestFetches.get(key);
    if (!pending) {
      pending = fetch().finally(() => this.manifestFetches.delete(key));
      this.manifestFetches.set(key, pending);
    }
    return pending;
  }

  async manifest(name: string, reference: Reference): Promise<ServedManifest> {
    if (reference.kind === 'digest') {
      // Content by digest is immutable: once cached, it is served locally forever.
      const cached = await this.local(name, reference);
      if (cached) return cached;
      const digest = reference.digest;
      return this.dedupe(`${name}@${digest.value}`, () => this.onceAcrossAppliances(this.ctx.layout.manifestFillLease(name, digest), {
        tryLocal: () => this.local(name, reference),
        fetch: () => this.fetchManifest(name, digest.value, digest),
      }));
    }
    const tag = reference.tag;
    // The tag file's digest and mtime (when it was written or last confirmed upstream), read together.
    const local = await this.ctx.manifests.readTag(name, tag);
    const localDigest = local?.digest;
    if (local && Date.now() - local.validatedAt < this.options.tagTtlMs) {
      const cached = await this.local(name, { kind: 'digest', digest: local.digest });
      if (cached) return cached;
    }
    try {
      return await this.dedupe(`${name}:${tag}`, () => this.revalidateTagOnce(name, tag, localDigest));
    } catch (err) {
      if (localDigest && canServeStale(err)) {
        const stale = await this.local(name, { kind: 'digest', digest: localDigest });
        if (stale) {
          this.ctx.log.warn({ name, tag, digest: localDigest.value, upstream: this.host, reason: (err as Error).message }, 'serving stale tag: upstream failed');
          return stale;
        }
      }
      throw err;
    }
  }

  /**
   * On a shared store, `fetch` runs on one appliance at a time (a store lease per manifest or tag) while
   * the others wait for its result in the store; otherwise it just runs (per-process dedupe is the caller's).
   */
  private async onceAcrossAppliances(leaseName: string, flight: Pick<StoreFlightOptions<ServedManifest>, 'tryLocal' | 'fetch' | 'whileHeld'>): Promise<ServedManifest> {
    if (!this.options.sharedStore) return flight.fetch();
    const ttlMs = this.options.fillLeaseMs ?? FILL_LEASE_MS;
    const { value } = await storeFlight(this.ctx.driver, leaseName, {
      ...flight, ttlMs, maxWaitMs: this.options.fillWaitMs ?? ttlMs, log: this.ctx.log,
    });
    return value;
  }

  /**
   * revalidateTag once across appliances: one HEAD (or first GET) per tag per TTL. While another
   * appliance revalidates, a stale copy is served at once; without one, its result is waited for.
   */
  private async revalidateTagOnce(name: string, tag: string, staleDigest: Digest | undefined): Promise<ServedManifest> {
    if (!this.options.sharedStore) return this.revalidateTag(name, tag, staleDigest);
    if (this.isNegative(`${name}:${tag}`)) throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: tag }, { message: `manifest unknown to upstream ${this.host}` });
    const started = Date.now();
    return this.onceAcrossAppliances(this.ctx.layout.tagFillLease(name, tag), {
      tryLocal: () => this.validatedSince(name, tag, started),
      fetch: () => this.revalidateTag(name, tag, staleDigest),
      whileHeld: async () => (staleDigest ? this.local(name, { kind: 'digest', digest: staleDigest }) : undefined),
    });
  }

  /** The tag's manifest if the tag is within its TTL or was validated since `since` (a flight's answer). */
  private async validatedSince(name: string, tag: string, since: number): Promise<StoredManifest | undefined> {
    const state = await this.ctx.manifests.readTag(name, tag);
    if (!state) return undefined;
    const ttl = this.options.tagTtlMs;
    const fresh = Date.now() - state.validatedAt < ttl || state.validatedAt >= since - Math.min(STORE_TIME_GRANULARITY_MS, ttl);
    return fresh ? this.local(name, { kind: 'digest', digest: state.digest }) : undefined;
  }

  /** Asks the upstream (HEAD, which Docker Hub does not count as a pull) whether a tag moved. */
  private async revalidateTag(name: string, tag: string, staleDigest: Digest | undefined): Promise<ServedManifest> {
    const key = `${name}:${tag}`;
    // Read again inside the single flight: a flight that ended between this request's first read and
    // its dedupe() (a wide window on S3) has just cached the tag, which needs no second upstream GET.
    const current = await this.ctx.manifests.readTag(name, tag);
    if (current && Date.now() - current.validatedAt < this.options.tagTtlMs) {
      const cached = await this.local(name, { kind: 'digest', digest: current.digest });
      if (cached) return cached;
    }
    const localDigest = current?.digest ?? staleDigest;
    if (this.isNegative(key)) throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: tag }, { message: `manifest unknown to upstream ${this.host}` });
    if (localDigest) {
      const res = await this.client.request('HEAD', this.path(name, `manifests/${tag}`), this.scope(name), MANIFEST_ACCEPT);
      await res.body.dump();
      if (res.status === 200) {
        const upstreamDigest = tryParseDigest(responseHeader(res.headers, 'docker-content-digest') ?? '');
        if (upstreamDigest?.value === localDigest.value) {
          const cached = await this.local(name, { kind: 'digest', digest: localDigest });
          if (cached) {
            await this.ctx.manifests.markTagValidated(name, tag, localDigest);
            return cached;
          }
        }
        if (upstreamDigest) {
          const cached = await this.local(name, { kind: 'digest', digest: upstreamDigest })
            ?? await this.fetchManifest(name, upstreamDigest.value, upstreamDigest);
          await this.ctx.manifests.putCached(name, cached.digest, cached.body, cached.mediaType, tag);
          this.ctx.log.info({ name, tag, from: localDigest.value, to: upstreamDigest.value }, 'tag moved upstream');
          return cached;
        }
      } else {
        if (res.status === 404) {
          this.rememberMissing(key);
          await this.ctx.manifests.delete(name, { kind: 'tag', tag }).catch(() => {});
        }
        throw this.mapStatus(res, 'manifest', { name, reference: tag });
      }
    }
    return this.fetchManifest(name, tag, undefined, tag);
  }

  /** GETs a manifest from upstream, verifies its digest and caches it (under `tag` if given). */
  private async fetchManifest(name: string, ref: string, expected: Digest | undefined, tag?: string): Promise<ServedManifest> {
    const key = expected ? `${name}@${expected.value}` : `${name}:${ref}`;
    if (this.isNegative(key)) throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: ref }, { message: `manifest unknown to upstream ${this.host}` });
    const res = await this.client.request('GET', this.path(name, `manifests/${ref}`), this.scope(name), MANIFEST_ACCEPT);
    if (res.status !== 200) {
      await res.body.dump();
      if (res.status === 404) this.rememberMissing(key);
      throw this.mapStatus(res, 'manifest', { name, reference: ref });
    }
    const body = await readCapped(res);
    const announced = tryParseDigest(responseHeader(res.headers, 'docker-content-digest') ?? '');
    const check = expected ?? announced;
    const digest = digestOf(body, check?.algorithm ?? 'sha256');
    if (check && check.value !== digest.value) {
      throw new RegistryError('DIGEST_INVALID', { expected: check.value, actual: digest.value }, {
        status: 502, message: `upstream ${this.host} sent a manifest that does not match its digest; nothing was cached`,
      });
    }
    const manifest = await this.ctx.manifests.putCached(name, digest, body, responseHeader(res.headers, 'content-type'), tag);
    this.ctx.log.info({ name, reference: ref, digest: digest.value, mediaType: manifest.mediaType }, 'manifest cached from upstream');
    return { digest, mediaType: manifest.mediaType, body, fromUpstream: true };
  }

  /** DELETE on a cache purges the local copy (never the upstream's), so the next pull refetches. */
  async purgeManifest(name: string, reference: Reference): Promise<void> {
    this.negative.clear();
    this.lists.clear();
    this.tagLists.clear();
    await this.ctx.manifests.delete(name, reference);
    this.ctx.log.info({ name, reference: reference.kind === 'tag' ? reference.tag : reference.digest.value }, 'purged from cache');
  }

  // ---- blobs -----------------------------------------------------------------------------------

  async getBlob(name: string, rawDigest: string, req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const digest = parseDigest(rawDigest);
    const spoolRequest = req.headers[FILL_SPOOL_HEADER] === '1' && req.method === 'GET' && !this.shared;
    if (await this.ctx.blobs.stat(digest)) {
      if (spoolRequest) return noSpool(reply);
      // Blobs are shared by digest across the cache; a repository that asks for one gets a link.
      if (!(await this.ctx.blobs.isLinked(name, digest))) await this.ctx.blobs.link(name, digest);
      reply.header(CACHE_RESULT_HEADER, 'hit');
      return getBlob(this.ctx, name, rawDigest, req, reply);
    }
    const key = `${name}@${digest.value}`;
    if (this.isNegative(key)) throw new RegistryError('BLOB_UNKNOWN', { name, digest: digest.value }, { message: `blob unknown to upstream ${this.host}` });

    const peerRequest = req.headers[PEER_FILL_HEADER] === '1';
    if (this.shared && !peerRequest && req.method === 'GET' && !this.fills.get(digest)) return this.serveShared(name, digest, req, reply);

    if (req.method === 'HEAD' && !this.fills.get(digest)) {
      const res = await this.client.request('HEAD', this.path(name, `blobs/${digest.value}`), this.scope(name));
      await res.body.dump();
      if (res.status !== 200) {
        if (res.status === 404) this.rememberMissing(key);
        throw this.mapStatus(res, 'blob', { name, digest: digest.value });
      }
      const size = Number(responseHeader(res.headers, 'content-length'));
      sendBlobHeaders(reply, digest);
      reply.header(CACHE_RESULT_HEADER, 'miss');
      reply.code(200);
      if (Number.isSafeInteger(size)) reply.header('content-length', size);
      return void reply.send();
    }

    // A peer appliance streams a fill that runs here; it never starts one (it holds no lease for it).
    const fill = peerRequest ? this.fills.get(digest) : this.startFill(name, digest);
    if (!fill) {
      if (await this.ctx.blobs.stat(digest)) return getBlob(this.ctx, name, rawDigest, req, reply);
      throw new RegistryError('BLOB_UNKNOWN', { name, digest: digest.value }, { message: 'no fill of this blob in progress on this appliance' });
    }
    await fill.ready;
    if (fill.size === undefined) await fill.finished;
    if (fill.done || fill.size === undefined) {
      if (fill.error) throw fill.error;
      if (spoolRequest) return noSpool(reply);
      reply.header(CACHE_RESULT_HEADER, 'miss');
      return getBlob(this.ctx, name, rawDigest, req, reply);
    }
    if (spoolRequest) {
      const events = fill.spoolEvents();
      if (!events) return noSpool(reply);
      reply.code(200).header(FILL_SPOOL_HEADER, 'events').header(CACHE_RESULT_HEADER, 'miss').header('content-type', 'application/x-ndjson');
      return void reply.send(events);
    }
    const size = fill.size;
    const { start, end } = sendFillHeaders(req, reply, digest, size);
    if (req.method === 'HEAD' || size === 0) return void reply.send(req.method === 'HEAD' ? undefined : Buffer.alloc(0));
    reply.send(fill.createReader(start, end));
  }

  /** This worker's fill of a blob (the running one, or a new one); `lease`: the store's, held for it while it runs. */
  private startFill(name: string, digest: Digest, lease?: HeldLease): BlobFill {
    const key = `${name}@${digest.value}`;
    const fill = this.fills.getOrStart(digest, (f) => f.run(async () => {
      const res = await this.client.request('GET', this.path(name, `blobs/${digest.value}`), this.scope(name));
      if (res.status !== 200) {
        await res.body.dump();
        if (res.status === 404) this.rememberMissing(key);
        throw this.mapStatus(res, 'blob', { name, digest: digest.value });
      }
      const length = Number(responseHeader(res.headers, 'content-length'));
      return { body: res.body, size: Number.isSafeInteger(length) && length >= 0 ? length : undefined };
    }, { driver: this.ctx.driver, key: this.ctx.layout.blobKey(digest), spoolDir: this.ctx.layout.tmpDir },
    () => this.ctx.blobs.link(name, digest), name, this.ctx.log));
    if (lease) {
      lease.keepRenewed((err) => this.ctx.log.warn({ name, digest: digest.value, err }, 'fill lease lost: another appliance may fetch this blob too'));
      // Deleted, not left expired: a key per blob ever filled would pile up in the store.
      void fill.finished.then(() => lease.releaseByDelete()).catch((err: unknown) => this.ctx.log.warn({ digest: digest.value, err }, 'fill lease not released'));
    }
    return fill;
  }

  /**
   * A GET of a blob that is not stored, on a shared store: from this worker's fill, a peer's, or a
   * new fill under the store's lease (shared-fill.ts), so the appliances fetch it from upstream once.
   */
  private async serveShared(name: string, digest: Digest, req: FastifyRequest, reply: FastifyReply): Promise<void> {
    const deadline = Date.now() + this.options.fillTimeoutMs;
    const first = await this.shared!.open(name, digest, deadline);
    if (first.kind === 'stored') {
      first.close();
      if (!(await this.ctx.blobs.isLinked(name, digest))) await this.ctx.blobs.link(name, digest);
      reply.header(CACHE_RESULT_HEADER, 'hit');
      return getBlob(this.ctx, name, digest.value, req, reply);
    }
    const size = first.size;
    let range: { start: number; end: number };
    try {
      range = sendFillHeaders(req, reply, digest, size);
    } catch (err) {
      first.close();
      throw err;
    }
    const { start, end } = range;
    if (size === 0) {
      first.close();
      return void reply.send(Buffer.alloc(0));
    }
    // This worker's own fill needs no failover (its failures are final): its reader as is.
    if (first.kind === 'local') return void reply.send(await first.stream(start, end));
    reply.send(Readable.from(this.shared!.relay(name, digest, first, start, end, deadline), { objectMode: false }));
  }

  /** Closes the connections to peer appliances. */
  async close(): Promise<void> {
    await this.shared?.close();
  }

  async purgeBlob(name: string, rawDigest: string): Promise<boolean> {
    this.negative.clear();
    return this.ctx.blobs.unlink(name, parseDigest(rawDigest));
  }

  // ---- listings --------------------------------------------------------------------------------

  /**
   * Passes a listing (tags, referrers) through from upstream, cached briefly. Returns undefined
   * when the upstream cannot answer, so the caller falls back to what the cache knows.
   */
  async upstreamList(name: string, suffix: string, query: URLSearchParams, kind: 'name' | 'manifest'): Promise<CachedList | undefined> {
    const search = query.toString();
    const key = `${name}/${suffix}?${search}`;
    const cached = this.lists.get(key);
    if (cached && cached.expiresAt > Date.now()) return cached;
    let res: UpstreamResponse;
    try {
      res = await this.client.request('GET', `${this.path(name, suffix)}${search ? `?${search}` : ''}`, this.scope(name), 'application/json');
    } catch (err) {
      if (canServeStale(err)) return cached;
      throw err;
    }
    if (res.status !== 200) {
      await res.body.dump();
      if (res.status === 404 && kind === 'name') throw this.mapStatus(res, 'name', { name });
      if (res.status === 404 || res.status >= 500 || res.status === 429) return cached;
      throw this.mapStatus(res, kind, { name });
    }
    const body = await readCapped(res);
    const headers: Record<string, string> = {};
    const upstreamName = upstreamRepository(this.client.endpoint, name);
    const link = responseHeader(res.headers, 'link');
    if (link) headers.link = upstreamName === name ? link : link.replace(`/v2/${upstreamName}/`, `/v2/${name}/`);
    const filters = responseHeader(res.headers, 'oci-filters-applied');
    if (filters) headers['oci-filters-applied'] = filters;
    const entry: CachedList = { body, contentType: responseHeader(res.headers, 'content-type') ?? 'application/json', headers, expiresAt: Date.now() + LIST_TTL_MS };
    this.lists.set(key, entry);
    return entry;
  }

  /**
   * The tags list as the upstream has it now (every page of it), sorted and paginated here with the
   * client's `n`/`last` and a Link to the next page, whatever the upstream's own order and paging;
   * the last list fetched (else the cache's own tags) only when the upstream can't answer.
   */
  async listTags(name: string, reply: FastifyReply, query: URLSearchParams, fallback: () => Promise<void>): Promise<void> {
    const { n, last } = parsePagination(query, TAGS_PAGE_CAP);
    let pending = this.tagFetches.get(name);
    if (!pending) {
      pending = this.fetchTags(name).finally(() => this.tagFetches.delete(name));
      this.tagFetches.set(name, pending);
    }
    const tags = await pending;
    if (!tags) return fallback();
    const { page, link } = paginate(tags, n, last, `/v2/${name}/tags/list`);
    if (link) reply.header('link', link);
    reply.code(200).header('content-type', 'application/json').send(JSON.stringify({ name, tags: page }));
  }

  /** Every tag of `name` upstream, following its Link headers (bounded); undefined when it can't answer. */
  private async fetchTags(name: string): Promise<string[] | undefined> {
    const previous = this.tagLists.get(name);
    const pageSize = this.options.upstreamTagsPageSize;
    let next: string | undefined = `${this.path(name, 'tags/list')}${pageSize ? `?n=${pageSize}` : ''}`;
    const seen = new Set<string>();
    const tags = new Set<string>();
    while (next !== undefined) {
      if (seen.size === MAX_TAG_PAGES || tags.size >= MAX_TAGS) {
        this.ctx.log.warn({ name, upstream: this.host, pages: seen.size, tags: tags.size }, 'upstream tag list truncated: too many pages or tags');
        break;
      }
      seen.add(next);
      let res: UpstreamResponse;
      try {
        res = await this.client.request('GET', next, this.scope(name), 'application/json');
      } catch (err) {
        if (canServeStale(err)) return previous;
        throw err;
      }
      if (res.status !== 200) {
        await res.body.dump();
        if (res.status >= 500 || res.status === 429) return previous;
        throw this.mapStatus(res, 'name', { name });
      }
      for (const tag of parseTagList(await readCapped(res), this.host)) tags.add(tag);
      next = this.nextPage(responseHeader(res.headers, 'link'), next);
      if (next !== undefined && seen.has(next)) next = undefined;
    }
    const sorted = [...tags].sort();
    this.tagLists.set(name, sorted);
    return sorted;
  }

  /** The upstream path of the page a Link header's rel="next" names, if it is on the upstream's /v2/. */
  private nextPage(link: string | undefined, current: string): string | undefined {
    const target = link && /<([^>]*)>\s*;[^,]*\brel="?next"?/i.exec(link)?.[1];
    if (!target) return undefined;
    let url: URL;
    try {
      url = new URL(target, new URL(current, this.client.endpoint.url));
    } catch {
      return undefined;
    }
    if (url.origin !== this.client.endpoint.url.origin || !url.pathname.startsWith('/v2/')) return undefined;
    return `${url.pathname}${url.search}`;
  }

  async listReferrers(name: string, rawDigest: string, reply: FastifyReply, query: URLSearchParams, fallback: () => Promise<void>): Promise<void> {
    const subject = parseDigest(rawDigest);
    const artifactType = query.get('artifactType');
    const forwarded = new URLSearchParams();
    if (artifactType !== null) forwarded.set('artifactType', artifactType);
    const list = await this.upstreamList(name, `referrers/${subject.value}`, forwarded, 'manifest');
    if (!list) return fallback();
    let body = list.body;
    const headers = { ...list.headers };
    if (artifactType !== null && !headers['oci-filters-applied']) {
      // The upstream did not filter: filter here, as the client asked.
      const index = JSON.parse(body.toString('utf8')) as { manifests?: Array<{ artifactType?: string }> };
      index.manifests = (index.manifests ?? []).filter((m) => m.artifactType === artifactType);
      body = Buffer.from(JSON.stringify(index));
      headers['oci-filters-applied'] = 'artifactType';
    }
    reply.code(200).headers({ ...headers, 'content-type': MediaType.OciIndex }).send(body);
  }
}

/** The gateway asked for a fill's spool, and there is none to follow (stored, or over): it forwards the GET as usual. */
function noSpool(reply: FastifyReply): void {
  reply.code(204).header(FILL_SPOOL_HEADER, 'none').send();
}
