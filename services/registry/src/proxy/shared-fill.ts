import { createHash, type Hash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, request, type Dispatcher } from 'undici';
import { PEER_TOKEN_HEADER } from '../../../../lib/appliance.js';
import type { Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { acquireLease, type HeldLease } from '../../../../lib/storage/lease.js';
import type { RegistryContext } from '../context.js';
import type { BlobFill } from './blob-fill.js';

/**
 * Cache fills shared by the appliances on one store (STEVEDORE_SHARED_STORE): a blob is fetched from
 * the upstream once in total, not once per appliance. The first appliance to miss takes the blob's
 * fill lease in the store (`_state/leases/fills/<alg>/<hex>`, created with If-None-Match: *), whose
 * record names where it serves the fill (`source`: its gateway's URL for the blob); it fills as a
 * single appliance does, renewing the lease, and deletes it once the blob is committed. Any other
 * appliance that misses streams the fill from that source as it grows (the holder's clients and its
 * peers read the same bytes; the holder never gives out the last byte before the digest matched).
 * If the holder dies, its stream breaks; the relay resumes at the byte it reached: from the store if
 * the blob got committed, else by taking the lease over once it expired and fetching the blob itself.
 */

export interface PeerSettings {
  /** This appliance's gateway as peers reach it (STEVEDORE_PEER_URL); undefined: peers wait for the committed blob. */
  url: string | undefined;
  token: string | undefined;
  /** PEM peers' certificates must chain to (STEVEDORE_PEER_CA); undefined: not verified (bytes are digest-checked). */
  caPath: string | undefined;
  leaseTtlMs: number;
}

/** A place the bytes of a blob being filled can be read from, and its size. */
export interface FillSource {
  kind: 'local' | 'peer' | 'stored';
  size: number;
  stream(start: number, end: number): Promise<AsyncIterable<Buffer> & Readable>;
  close(): void;
}

/** Waits between looks at the store and the lease while another appliance's fill is not reachable. */
const POLL_FIRST_MS = 50;
const POLL_MAX_MS = 500;

export function fillLeaseName(digest: Digest): string {
  return `fills/${digest.algorithm}/${digest.hex}`;
}

export class SharedFills {
  private readonly dispatcher: Dispatcher;

  constructor(
    private readonly ctx: RegistryContext,
    private readonly peer: PeerSettings,
    /** The upstream host (routes a peer's request to the right cache worker: `?ns=`). */
    private readonly namespace: string,
    /** Starts this worker's own fill of a blob (the single-appliance fill) while it holds `lease`. */
    private readonly startFill: (name: string, digest: Digest, lease: HeldLease) => BlobFill,
    private readonly localFill: (digest: Digest) => BlobFill | undefined,
    upstreamTimeoutMs: number,
  ) {
    const ca = peer.caPath ? readFileSync(peer.caPath) : undefined;
    this.dispatcher = new Agent({
      connect: ca
        // Peers are addressed by IP: the chain is checked against the shared CA, the name is not.
        ? { ca, checkServerIdentity: () => undefined }
        : { rejectUnauthorized: false },
      headersTimeout: upstreamTimeoutMs,
      bodyTimeout: upstreamTimeoutMs,
    });
  }

  /** Where this appliance serves its fill of `digest` for repository `name` to its peers. */
  private sourceOf(name: string, digest: Digest): string | undefined {
    if (!this.peer.url) return undefined;
    return `${this.peer.url}/v2/${name}/blobs/${digest.value}?ns=${encodeURIComponent(this.namespace)}`;
  }

  /**
   * A source for the blob's bytes: the store once committed, this worker's fill, or the fill of the
   * appliance holding the lease. Takes the lease (and starts a fill) when nobody holds it.
   */
  async open(name: string, digest: Digest, deadline: number): Promise<FillSource> {
    let pause = POLL_FIRST_MS;
    const own = this.sourceOf(name, digest);
    // The fill this call started: kept, because a failed fill leaves the worker's map at once, and
    // looking it up again would take the lease anew and ask the upstream a second time.
    let started: BlobFill | undefined;
    for (;;) {
      const stored = await this.ctx.blobs.stat(digest);
      if (stored) return this.storedSource(digest, stored.size);
      const local = this.localFill(digest) ?? started;
      if (local) {
        await local.ready;
        if (local.size === undefined || local.done) await local.finished;
        if (local.error) throw local.error;
        if (!local.done) return localSource(local);
        started = undefined;
        continue;
      }
      const attempt = await acquireLease(this.ctx.driver, fillLeaseName(digest), { ttlMs: this.peer.leaseTtlMs, source: own });
      if (attempt.acquired) {
        // Committed by another appliance between our stat and our lease: nothing to fetch.
        if (await this.ctx.blobs.stat(digest)) {
          await attempt.lease.releaseByDelete().catch(() => {});
          continue;
        }
        started = this.startFill(name, digest, attempt.lease);
        continue;
      }
      const { source } = attempt.heldBy;
      if (source && source !== own) {
        const opened = await this.peerSource(source, digest).catch((err: unknown) => {
          this.ctx.log.debug({ digest: digest.value, source, err }, 'peer fill not reachable');
          return undefined;
        });
        if (opened) return opened;
      }
      if (Date.now() + pause > deadline) {
        throw new RegistryError('UNAVAILABLE', { digest: digest.value, filler: attempt.heldBy.holder }, {
          status: 503, message: 'another appliance is fetching this blob and could not be reached; try again',
        });
      }
      await sleep(pause);
      pause = Math.min(pause * 2, POLL_MAX_MS);
    }
  }

  private storedSource(digest: Digest, size: number): FillSource {
    return {
      kind: 'stored', size,
      stream: async (start, end) => (await this.ctx.blobs.open(digest, start, end)) as AsyncIterable<Buffer> & Readable,
      close: () => {},
    };
  }

  private async get(source: string, range: string | undefined): Promise<Dispatcher.ResponseData> {
    const headers: Record<string, string> = { [PEER_TOKEN_HEADER]: this.peer.token ?? '' };
    if (range) headers.range = range;
    return request(source, { method: 'GET', headers, dispatcher: this.dispatcher });
  }

  /** The holder's fill of `digest` (or its committed blob), if it answers with it. */
  private async peerSource(source: string, digest: Digest): Promise<FillSource | undefined> {
    const res = await this.get(source, undefined);
    const length = Number(res.headers['content-length']);
    if (res.statusCode !== 200 || !Number.isSafeInteger(length)) {
      // 404: no fill there (it just ended, or the lease is a dead process's): look again.
      await res.body.dump();
      if (res.statusCode !== 404) this.ctx.log.warn({ digest: digest.value, source, status: res.statusCode }, 'peer fill request refused');
      return undefined;
    }
    let first: Dispatcher.ResponseData | undefined = res;
    return {
      kind: 'peer', size: length,
      stream: async (start, end) => {
        if (first && start === 0 && end === length - 1) {
          const body = first.body;
          first = undefined;
          return body as unknown as AsyncIterable<Buffer> & Readable;
        }
        this.closeFirst(first);
        first = undefined;
        const ranged = await this.get(source, `bytes=${start}-${end}`);
        if (ranged.statusCode !== 206 || ranged.headers['content-range'] !== `bytes ${start}-${end}/${length}`) {
          await ranged.body.dump();
          throw new Error(`peer answered a range request with ${ranged.statusCode}`);
        }
        return ranged.body as unknown as AsyncIterable<Buffer> & Readable;
      },
      close: () => {
        this.closeFirst(first);
        first = undefined;
      },
    };
  }

  private closeFirst(first: Dispatcher.ResponseData | undefined): void {
    first?.body.destroy();
  }

  /**
   * Bytes start..end of the blob, from `first` and, when a peer's stream breaks, from wherever the
   * blob is next (the store, our own fill after taking the lease over, another holder): the client
   * keeps its one response. The whole blob relayed from a peer is hashed here too, and its last chunk
   * held back unless the digest matches (a peer is another process, possibly not ours).
   */
  async *relay(name: string, digest: Digest, first: FillSource, start: number, end: number, deadline: number): AsyncGenerator<Buffer> {
    const size = first.size;
    let source = first;
    let position = start;
    const hash: Hash | undefined = start === 0 && end === size - 1 && first.kind === 'peer' ? createHash(digest.algorithm) : undefined;
    try {
      while (position <= end) {
        try {
          const stream = await source.stream(position, end);
          for await (const chunk of stream) {
            const bytes = chunk.length > end + 1 - position ? chunk.subarray(0, end + 1 - position) : chunk;
            position += bytes.length;
            if (hash) {
              hash.update(bytes);
              if (position > end && `${digest.algorithm}:${hash.digest('hex')}` !== digest.value) {
                throw new RegistryError('DIGEST_INVALID', { digest: digest.value }, { status: 502, message: 'a peer appliance sent a blob that does not match its digest' });
              }
            }
            yield bytes;
            if (position > end) break;
          }
          if (position <= end) throw new Error(`the ${source.kind} source ended at byte ${position}`);
        } catch (err) {
          // Our own fill's failures (upstream errors, a digest mismatch) are final, as on one appliance.
          if (source.kind !== 'peer' || err instanceof RegistryError) throw err;
          this.ctx.log.warn({ name, digest: digest.value, at: position, err: (err as Error).message }, 'peer fill broke off; resuming from another source');
          source.close();
          source = await this.open(name, digest, deadline);
          if (source.size !== size) throw new Error(`blob size changed between sources: ${size} then ${source.size}`);
        }
      }
    } finally {
      source.close();
    }
    if (!(await this.ctx.blobs.isLinked(name, digest).catch(() => true))) await this.ctx.blobs.link(name, digest).catch(() => {});
  }

  close(): Promise<void> {
    return this.dispatcher.close();
  }
}

function localSource(fill: BlobFill): FillSource {
  return {
    kind: 'local', size: fill.size!,
    stream: async (start, end) => fill.createReader(start, end) as AsyncIterable<Buffer> & Readable,
    close: () => {},
  };
}
