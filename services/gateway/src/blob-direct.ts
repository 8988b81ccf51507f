import { open, type FileHandle } from 'node:fs/promises';
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { AppliancePlan, WorkerPlan } from '../../../lib/appliance.js';
import { parseRange } from '../../../lib/http/range.js';
import { SMALL_BLOB_MAX, sendFileResponse, sendStreamResponse, type FileResponse } from '../../../lib/http/file-response.js';
import { tryParseDigest, type Digest } from '../../../lib/oci/digest.js';
import { RECHECK_MS } from '../../../lib/storage/manifest-reader.js';
import { echoedNamespace } from '../../../lib/oci/route.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import { BoundedMap } from '../../../lib/storage/bounded-map.js';
import { readOpened, type StorageDriver } from '../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../lib/storage/driver/filesystem.js';
import { RemoteBlobSource, type RemoteBlobSettings } from '../../../lib/storage/remote-blob-source.js';

/** Small blob bodies kept in memory, in all (as the worker's BlobStore keeps them). */
const SMALL_BODIES_BYTES = 8 * 1024 * 1024;
/**
 * How long a repository's link to a small blob, and the blob, are trusted before the store is asked
 * again: what another process removes (GC, the cleaner) stops being served within about a second,
 * as for manifests (lib/storage/manifest-reader.ts RECHECK_MS); a delete through the gateway at once.
 */
const SMALL_RECHECK_MS = RECHECK_MS;
/** Link facts kept per repository before that repository's are dropped (a bound, not an expected size). */
const LINKS_PER_REPOSITORY = 10_000;

/**
 * Blob GETs the gateway answers itself, straight from the store, instead of proxying them.
 *
 * Measured (bench/gateway-bench.ts, 2 cores): through the second HTTP hop a 512 MiB blob came at
 * ~0.3-0.4x the worker's own rate, the gateway spending ~2x the worker's CPU per byte to copy it
 * from one socket to the other; a 4 KiB blob at ~0.3x the worker's request rate. Read from disk
 * (large blobs) or memory (small ones, up to SMALL_BLOB_MAX, as the worker keeps them), a blob
 * costs what it costs the worker. On a store that is not a directory (S3), large blobs are the
 * store's ranged read, streamed as the worker streams it.
 *
 * Only the case with a single possible answer is taken: a GET (no If-None-Match) of a blob that
 * the repository links (the worker's own check) and that is stored, with a satisfiable or no Range.
 * The answer is the worker's, header for header (routes/blobs.ts, app.ts): 200 or 206 and the same
 * headers, the cache's `hit` for a pull-through worker. Everything else (not linked, not stored, a
 * fill in progress, HEAD, conditional, 416, a failure before the headers) goes to the worker as
 * before. For large blobs, links and blobs are checked in the store for every request; for small ones
 * at most SMALL_RECHECK_MS apart (the worker trusts its own for 5 s), and a write through the
 * gateway (invalidate()) drops what is known of the repository.
 */
export class DirectBlobs {
  private readonly layouts = new Map<string, StorageLayout>();
  /** Small blob bodies by digest. */
  private readonly smallBodies = new BoundedMap<string, Buffer>(10_000, { maxWeight: SMALL_BODIES_BYTES, weigh: (b) => b.length });
  /** `<worker>\0<repository>` -> small blob digest -> when its link and file were last seen on disk. */
  private readonly smallLinks = new BoundedMap<string, Map<string, number>>(10_000);

  /** On a store that is not a directory: how large blobs are served (the worker's rules, lib/storage/remote-blob-source.ts). */
  private readonly remote: RemoteBlobSource;

  /** How long a small blob's link is trusted: SMALL_RECHECK_MS, 0 on a store other appliances write too. */
  private readonly smallRecheckMs: number;

  constructor(private readonly driver: StorageDriver, plan: AppliancePlan, remoteBlobs: RemoteBlobSettings = { redirectTtlMs: undefined, localCache: undefined }, sharedStore = false) {
    this.smallRecheckMs = sharedStore ? 0 : SMALL_RECHECK_MS;
    this.remote = new RemoteBlobSource(driver, remoteBlobs);
    // The layout's root only names file paths, which are not used here: keys go through the driver.
    this.layouts.set(plan.hosted.name, new StorageLayout(driver.location));
    // A cache worker's namespace is its upstream's canonical host (buildRegistry: config.upstream.host).
    for (const worker of plan.proxies) this.layouts.set(worker.name, new StorageLayout(driver.location, { namespace: worker.upstream! }));
  }

  /** A write to `repository` (a blob delete) went through the gateway to `worker`: forget its links. */
  invalidate(worker: WorkerPlan, repository: string): void {
    this.smallLinks.delete(`${worker.name}\0${repository}`);
  }

  /**
   * The response to send for `GET <repository>/blobs/<reference>` on `worker`; undefined when the
   * worker must answer. A promise only when the store must be read (a small blob known and
   * recently checked is answered from memory).
   */
  prepare(worker: WorkerPlan, repository: string, reference: string, headers: IncomingHttpHeaders, url: string): DirectBlob | undefined | Promise<DirectBlob | undefined> {
    const layout = this.layouts.get(worker.name);
    const digest = tryParseDigest(reference);
    if (!layout || !digest || headers['if-none-match'] !== undefined) return undefined;
    const body = this.smallBodies.get(digest.value);
    if (body !== undefined) {
      const checkedAt = this.smallLinks.get(`${worker.name}\0${repository}`)?.get(digest.value);
      if (checkedAt !== undefined && Date.now() - checkedAt < this.smallRecheckMs) return fromMemory(body, digest, headers, url);
    }
    return this.driver instanceof FilesystemDriver
      ? this.prepareFromDisk(this.driver, worker, layout, repository, digest, headers, url)
      : this.prepareFromStore(worker, layout, repository, digest, headers, url);
  }

  /** Sends a prepared blob; resolves with a failure worth logging (see sendFileResponse). */
  send(blob: DirectBlob, res: ServerResponse, sent: (bytes: number) => void): Promise<Error | undefined> | undefined {
    if ('stream' in blob) return sendStreamResponse(blob.stream, blob.status, blob.headers, blob.length, res, sent);
    if (!('body' in blob)) return sendFileResponse(blob, res, sent);
    res.writeHead(blob.status, blob.headers);
    res.end(blob.body);
    sent(blob.body.length);
    return undefined;
  }

  /** A prepared blob that will not be sent (its client left): its file closed, its stream ended. */
  discard(blob: DirectBlob): void {
    if ('handle' in blob) void blob.handle.close().catch(() => {});
    else if ('stream' in blob) blob.stream.destroy();
  }

  /** The filesystem fast path: the link checked and the blob opened as files. */
  private async prepareFromDisk(driver: FilesystemDriver, worker: WorkerPlan, layout: StorageLayout, repository: string, digest: Digest, headers: IncomingHttpHeaders, url: string): Promise<DirectBlob | undefined> {
    let handle: FileHandle | undefined;
    try {
      const checkedAt = Date.now();
      await driver.stat(layout.layerLinkKey(repository, digest));
      handle = await open(driver.path(layout.blobKey(digest)), 'r');
      const size = (await handle.stat()).size;
      if (size <= SMALL_BLOB_MAX) {
        const known = this.smallBodies.get(digest.value);
        const body = known !== undefined && known.length === size ? known : await handle.readFile();
        await handle.close();
        handle = undefined;
        if (body.length !== size) return undefined;
        this.smallBodies.set(digest.value, body);
        this.rememberLink(worker, repository, digest, checkedAt);
        return fromMemory(body, digest, headers, url);
      }
      const answer = rangedAnswer(digest, size, headers.range, url);
      if (!answer) {
        await handle.close();
        return undefined;
      }
      return { handle, ...answer };
    } catch {
      // Not linked, not stored (ENOENT), or unreadable: the worker answers (and logs what it must).
      await handle?.close().catch(() => {});
      this.smallBodies.delete(digest.value);
      return undefined;
    }
  }

  /**
   * Any other store (S3): link and blob stat'ed, a small blob read whole, a large one streamed from its
   * range. A whole blob whose bytes are not in memory is read while the link is checked, its size
   * taken from the read (prepareWhole): one store round trip instead of a stat and then the read.
   */
  private async prepareFromStore(worker: WorkerPlan, layout: StorageLayout, repository: string, digest: Digest, headers: IncomingHttpHeaders, url: string): Promise<DirectBlob | undefined> {
    try {
      const checkedAt = Date.now();
      const key = layout.blobKey(digest);
      if (headers.range === undefined && !this.smallBodies.has(digest.value) && await this.remote.readsWhole(digest)) {
        return await this.prepareWhole(worker, layout, repository, digest, url, checkedAt);
      }
      const [, info] = await Promise.all([this.driver.stat(layout.layerLinkKey(repository, digest)), this.driver.stat(key)]);
      const size = info.size;
      if (size <= SMALL_BLOB_MAX) {
        const known = this.smallBodies.get(digest.value);
        const body = known !== undefined && known.length === size ? known : await this.driver.getContent(key);
        if (body.length !== size) return undefined;
        this.smallBodies.set(digest.value, body);
        this.rememberLink(worker, repository, digest, checkedAt);
        return fromMemory(body, digest, headers, url);
      }
      // STEVEDORE_S3_REDIRECT: the worker answers with the redirect (one small answer through the hop).
      if (this.remote.redirects) return undefined;
      const answer = rangedAnswer(digest, size, headers.range, url);
      if (!answer) return undefined;
      const { status, headers: out, start, end } = answer;
      const body = await this.remote.body(key, digest, size, start, end);
      if (body.kind === 'file') return { handle: body.handle, status, headers: out, start: body.start, end: body.end };
      return { stream: body.stream, length: end - start + 1, status, headers: out };
    } catch {
      // Not linked, not stored, or the store unavailable: the worker answers (and logs what it must).
      this.smallBodies.delete(digest.value);
      return undefined;
    }
  }

  /** The link stat'ed while the whole blob is read (StorageDriver.open); undefined (the worker answers) if either fails. */
  private async prepareWhole(worker: WorkerPlan, layout: StorageLayout, repository: string, digest: Digest, url: string, checkedAt: number): Promise<DirectBlob | undefined> {
    const [linked, opened] = await Promise.allSettled([this.driver.stat(layout.layerLinkKey(repository, digest)), this.driver.open(layout.blobKey(digest))]);
    if (opened.status === 'rejected') return undefined;
    const { stream, size } = opened.value;
    if (linked.status === 'rejected') {
      stream.destroy();
      return undefined;
    }
    if (size > SMALL_BLOB_MAX) return { stream: this.remote.keepWhole(digest, size, stream), length: size, status: 200, headers: blobHeaders(digest, size, undefined, url) };
    const body = await readOpened(stream, size);
    if (!body) return undefined;
    this.smallBodies.set(digest.value, body);
    this.rememberLink(worker, repository, digest, checkedAt);
    return { status: 200, headers: blobHeaders(digest, size, undefined, url), body };
  }

  private rememberLink(worker: WorkerPlan, repository: string, digest: Digest, checkedAt: number): void {
    const key = `${worker.name}\0${repository}`;
    let links = this.smallLinks.get(key);
    if (!links || links.size >= LINKS_PER_REPOSITORY) {
      links = new Map();
      this.smallLinks.set(key, links);
    }
    links.set(digest.value, checkedAt);
  }
}

/** A small blob's answer from its bytes in memory: 200, or 206 for a satisfiable Range; undefined (the worker answers) otherwise. */
function fromMemory(body: Buffer, digest: Digest, headers: IncomingHttpHeaders, url: string): DirectBlob | undefined {
  const answer = rangedAnswer(digest, body.length, headers.range, url);
  if (!answer) return undefined;
  return { status: answer.status, headers: answer.headers, body: answer.status === 200 ? body : body.subarray(answer.start, answer.end + 1) };
}

/**
 * The worker's answer to a GET of a `size`-byte blob with this Range header: 200 or 206, its headers
 * and the inclusive byte range to send; undefined for an unsatisfiable range (the worker answers 416).
 */
export function rangedAnswer(digest: Digest, size: number, rangeHeader: string | undefined, url: string): { status: 200 | 206; headers: OutgoingHttpHeaders; start: number; end: number } | undefined {
  const range = parseRange(rangeHeader, size);
  if (range.kind === 'unsatisfiable') return undefined;
  if (range.kind === 'full') return { status: 200, headers: blobHeaders(digest, size, undefined, url), start: 0, end: size - 1 };
  const { start, end } = range.range;
  return { status: 206, headers: blobHeaders(digest, size, [start, end], url), start, end };
}

/** The worker's headers for a blob GET (app.ts, routes/blobs.ts), in its order. */
function blobHeaders(digest: Digest, size: number, range: [number, number] | undefined, url: string): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = { 'docker-distribution-api-version': 'registry/2.0' };
  const ns = namespaceHeader(url);
  if (ns) out['oci-namespace'] = ns;
  out['content-type'] = 'application/octet-stream';
  out['docker-content-digest'] = digest.value;
  out.etag = `"${digest.value}"`;
  out['accept-ranges'] = 'bytes';
  out['cache-control'] = 'max-age=31536000';
  if (range) out['content-range'] = `bytes ${range[0]}-${range[1]}/${size}`;
  out['content-length'] = range ? range[1] - range[0] + 1 : size;
  return out;
}

/** The OCI-Namespace header the worker would send for this request URL (its `?ns=`), if any. */
export function namespaceHeader(url: string): string | undefined {
  const q = url.indexOf('?');
  return q === -1 ? undefined : echoedNamespace(new URLSearchParams(url.slice(q + 1)).get('ns'));
}

/** A stored blob to send: a large one from its open file or the store's stream, a small one from memory; 200 or 206. */
export type DirectBlob = (FileResponse & { status: 200 | 206 })
  | { status: 200 | 206; headers: OutgoingHttpHeaders; body: Buffer }
  | { status: 200 | 206; headers: OutgoingHttpHeaders; stream: Readable; length: number };
