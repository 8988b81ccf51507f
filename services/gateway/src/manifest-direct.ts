import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';
import type { AppliancePlan, WorkerPlan } from '../../../lib/appliance.js';
import { manifestResponse } from '../../../lib/oci/manifest-response.js';
import { isValidTag } from '../../../lib/oci/reference.js';
import { tryParseDigest, type Digest } from '../../../lib/oci/digest.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import { ManifestReader } from '../../../lib/storage/manifest-reader.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { namespaceHeader } from './blob-direct.js';

export interface DirectManifest {
  status: 200 | 304;
  headers: OutgoingHttpHeaders;
  body: Buffer | undefined;
}

/** A request for a manifest the gateway may answer. */
export interface ManifestRequest {
  worker: WorkerPlan;
  repository: string;
  reference: string;
  method: string;
  headers: IncomingHttpHeaders;
  /** The URL as sent to the worker (for `?ns=`). */
  url: string;
}

/** Not decided from memory: the store must be read first. */
const NOT_CACHED = Symbol('not cached');

/**
 * Manifest GET/HEAD the gateway answers itself from the store, as it does for large blobs.
 *
 * Measured (bench/gateway-bench.ts, 2 cores): proxied through the second HTTP hop, manifest GETs
 * by tag came at 0.25-0.35x the worker's own rate: the gateway spent ~2x the worker's CPU per
 * request on the hop alone. Answered here, a manifest costs about what it costs the worker.
 *
 * The answer is the worker's (lib/oci/manifest-response.ts, read through the same ManifestReader
 * the worker uses): same status, headers and bytes. Only stored manifests the worker would serve
 * without asking anything else are taken:
 *  - by digest: a revision of the repository (content never changes under a digest);
 *  - by tag, hosted: the tag file's digest; cached for at most a second (as in the worker), and
 *    dropped at once when a write to the repository passes through the gateway (invalidate()),
 *    so a client always reads its own push or delete; on a shared store (other appliances write
 *    it), read per request;
 *  - by tag, cache worker: only while the tag is within the worker's tag TTL (the tag key's
 *    modified time: the worker rewrites the tag when it revalidates it); past it, the worker
 *    asks the upstream as before.
 * Anything else (unknown, Accept refusing the stored type, TTL passed, bodies over 256 KiB) goes
 * to the worker. Once read, an answer comes from memory without waiting on anything.
 */
export class DirectManifests {
  private readonly readers = new Map<string, ManifestReader>();

  constructor(driver: StorageDriver, plan: AppliancePlan, private readonly tagTtlMs: number, sharedStore = false) {
    // On a store other appliances write too, tags and revisions are read per request (as in the worker).
    const caching = sharedStore ? { recheckMs: 0 } : undefined;
    // The layout's root only names file paths, which the reader does not use: keys go through the driver.
    this.readers.set(plan.hosted.name, new ManifestReader(driver, new StorageLayout(driver.location), caching));
    // A cache worker's namespace is its upstream's canonical host (buildRegistry: config.upstream.host).
    for (const worker of plan.proxies) this.readers.set(worker.name, new ManifestReader(driver, new StorageLayout(driver.location, { namespace: worker.upstream! }), caching));
  }

  /** A write to `repository` went through the gateway to `worker`: forget what is cached of it. */
  invalidate(worker: WorkerPlan, repository: string): void {
    this.readers.get(worker.name)?.invalidate(repository);
  }

  /** The response to the request, or undefined when the worker must answer; a promise only when the store must be read. */
  answer(request: ManifestRequest): DirectManifest | undefined | Promise<DirectManifest | undefined> {
    const reader = this.readers.get(request.worker.name);
    if (!reader) return undefined;
    const known = this.fromMemory(reader, request);
    if (known !== NOT_CACHED) return known;
    return this.load(reader, request).then(() => {
      const loaded = this.fromMemory(reader, request);
      return loaded === NOT_CACHED ? undefined : loaded;
    }, () => undefined); // an unreadable file: the worker answers (and logs) it
  }

  private fromMemory(reader: ManifestReader, request: ManifestRequest): DirectManifest | undefined | typeof NOT_CACHED {
    const { worker, repository, reference } = request;
    let digest: Digest | undefined;
    if (reference.includes(':')) {
      digest = tryParseDigest(reference);
      if (!digest) return undefined;
    } else {
      if (!isValidTag(reference)) return undefined;
      const tag = reader.peekTag(repository, reference);
      if (!tag) return NOT_CACHED;
      if (worker.kind === 'proxy' && Date.now() - tag.validatedAt >= this.tagTtlMs) return undefined;
      digest = tag.digest;
    }
    const manifest = reader.peek(repository, digest);
    if (!manifest) return NOT_CACHED;
    let answer;
    try {
      answer = manifestResponse(manifest, repository, reference, request.method, request.headers);
    } catch {
      return undefined;
    }
    const headers: OutgoingHttpHeaders = { 'docker-distribution-api-version': 'registry/2.0' };
    const ns = namespaceHeader(request.url);
    if (ns) headers['oci-namespace'] = ns;
    Object.assign(headers, answer.headers);
    return { status: answer.status, headers, body: answer.body };
  }

  /** Reads into the reader's caches what fromMemory() needs. */
  private async load(reader: ManifestReader, { repository, reference }: ManifestRequest): Promise<void> {
    const digest = reference.includes(':') ? tryParseDigest(reference) : (await reader.readTag(repository, reference))?.digest;
    if (digest) await reader.find(repository, { kind: 'digest', digest });
  }
}
