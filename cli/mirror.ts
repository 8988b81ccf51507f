import { pipeline, Transform, type Readable } from 'node:stream';
import { ConfigError, loadMirrorConfig, type MirrorConfig, optionsHelp, MIRROR_OPTIONS } from '../lib/config.js';
import { createLogger } from '../lib/log.js';
import { digestOf, tryParseDigest, type Digest } from '../lib/oci/digest.js';
import { isRegistryError, RegistryError } from '../lib/oci/errors.js';
import { parseManifest, type ParsedManifest } from '../lib/oci/manifest.js';
import { isIndexMediaType, MANIFEST_MEDIA_TYPES } from '../lib/oci/media-types.js';
import { credentialsFor, parseUpstream, readAuthsFile, type AuthsEntry } from '../lib/upstreams.js';
import { readImageList, storedRepository, type ImageListEntry, type ImageReference } from '../lib/airgap/image-list.js';
import { formatPlatform, selectIndexEntries } from '../lib/airgap/platform.js';
import { formatBytes, formatDuration, ImageProgress } from '../lib/airgap/progress.js';
import { AirgapError, StoreWriter, type ManifestToStore } from '../lib/airgap/store-writer.js';
import { openStoreTarget, openStoreWriter } from './store.js';
import { readBodyCapped, responseHeader, UpstreamClient, type UpstreamResponse } from '../services/registry/src/proxy/upstream-client.js';

/**
 * `stevedore mirror`: copies every image of a list from its registry into a store, to be carried
 * into an air-gapped network and served read-only. Blobs already in the store are skipped (a store
 * only holds verified blobs), so an interrupted run resumes where it stopped; an image's manifests
 * and tag are written only after all its blobs, so a half-copied image is never visible.
 */

const MANIFEST_ACCEPT = [...MANIFEST_MEDIA_TYPES].join(', ');
const MAX_MANIFEST = 16 * 1024 * 1024;
const BLOB_ATTEMPTS = 3;

class MirrorError extends Error {
  constructor(message: string, readonly retryable = false) {
    super(message);
  }
}

interface FetchedManifest extends ManifestToStore {
  parsed: ParsedManifest;
}

interface MirrorContext {
  config: MirrorConfig;
  writer: StoreWriter;
  progress: ImageProgress;
  client(registry: string): UpstreamClient;
}

interface ImageOutcome {
  name: string;
  fetched: number;
  bytes: number;
  present: number;
  note: string;
}

const LOOPBACK = /^(?:localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d+)?$/;

/** Plain HTTP for --insecure-registry hosts, hosts keyed http://... in the auths file, and loopback hosts. */
export function usesPlainHttp(host: string, insecure: readonly string[], auths: readonly AuthsEntry[]): boolean {
  return LOOPBACK.test(host) || insecure.includes(host) || auths.some((e) => e.endpoint.host === host && e.endpoint.url.protocol === 'http:');
}

function describeError(err: unknown): string {
  if (err instanceof MirrorError || err instanceof AirgapError || isRegistryError(err)) return err.message;
  return (err as Error)?.message ?? String(err);
}

function readCapped(res: UpstreamResponse, limit: number, what: string): Promise<Buffer> {
  return readBodyCapped(res, limit, () => new MirrorError(`${what} is larger than ${formatBytes(limit)}: refused`));
}

function statusError(status: number, what: string, registry: string): MirrorError {
  if (status === 404) return new MirrorError(`${what} not found on ${registry} (404)`);
  if (status === 403) return new MirrorError(`${registry} denied access to ${what} (403)`);
  if (status === 429) return new MirrorError(`${registry} rate-limited the request for ${what} (429 Too Many Requests); try again later or add credentials`, true);
  return new MirrorError(`${registry} answered HTTP ${status} for ${what}`, status >= 500);
}

async function fetchManifest(client: UpstreamClient, ref: ImageReference, reference: string, expected: Digest | undefined): Promise<FetchedManifest> {
  const what = `manifest ${ref.registry}/${ref.repository}${expected ? `@${reference}` : `:${reference}`}`;
  const res = await client.request('GET', `/v2/${ref.repository}/manifests/${reference}`, `repository:${ref.repository}:pull`, MANIFEST_ACCEPT);
  if (res.status !== 200) {
    await res.body.dump();
    throw statusError(res.status, what, ref.registry);
  }
  const body = await readCapped(res, MAX_MANIFEST, what);
  const digest = digestOf(body, expected?.algorithm ?? 'sha256');
  if (expected && digest.value !== expected.value) throw new MirrorError(`${what} is corrupt: its content hashes to ${digest.value}`);
  const announced = tryParseDigest(responseHeader(res.headers, 'docker-content-digest') ?? '');
  if (!expected && announced?.algorithm === 'sha256' && announced.value !== digest.value) {
    throw new MirrorError(`${what}: the registry says its digest is ${announced.value}, its content hashes to ${digest.value}`);
  }
  let parsed: ParsedManifest;
  try {
    parsed = parseManifest(body, responseHeader(res.headers, 'content-type'));
  } catch (err) {
    throw new MirrorError(`${what}: ${describeError(err)}`);
  }
  return { digest, body, mediaType: parsed.mediaType, parsed };
}

async function fetchBlob(ctx: MirrorContext, client: UpstreamClient, ref: ImageReference, digest: Digest, size: number): Promise<void> {
  const what = `blob ${digest.value}`;
  for (let attempt = 1; ; attempt++) {
    let received = 0;
    try {
      const res = await client.request('GET', `/v2/${ref.repository}/blobs/${digest.value}`, `repository:${ref.repository}:pull`);
      if (res.status !== 200) {
        await res.body.dump();
        throw statusError(res.status, what, ref.registry);
      }
      const counter = new Transform({
        transform(chunk: Buffer, _encoding, callback) {
          received += chunk.length;
          if (received > size) return callback(new MirrorError(`${what}: ${ref.registry} sent more than the ${size} bytes its descriptor says`));
          ctx.progress.bytes(chunk.length);
          callback(null, chunk);
        },
      });
      const source: Readable = pipeline(res.body, counter, () => {});
      await ctx.writer.writeStream(digest, source, size, `from ${ref.registry}/${ref.repository}`);
      return;
    } catch (err) {
      ctx.progress.bytes(-received);
      const retryable = err instanceof MirrorError ? err.retryable
        : err instanceof AirgapError || !isRegistryError(err) || (err as RegistryError).code === 'UNAVAILABLE';
      if (!retryable || attempt >= BLOB_ATTEMPTS) throw err;
      await new Promise((resolve) => setTimeout(resolve, 500 * attempt));
    }
  }
}

/** Runs `task` over `items`, `limit` at a time; after a failure nothing new starts, and the first error is thrown once the rest settle. */
async function eachLimited<T>(items: readonly T[], limit: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { err: unknown } | undefined;
  const worker = async () => {
    while (!failure && next < items.length) {
      const item = items[next++]!;
      try {
        await task(item);
      } catch (err) {
        failure ??= { err };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.err;
}

async function mirrorImage(ctx: MirrorContext, entry: ImageListEntry): Promise<ImageOutcome> {
  const ref = entry.reference;
  const { config, writer } = ctx;
  const client = ctx.client(ref.registry);
  const name = storedRepository(ref, config.keepRegistry);
  const wanted = config.allPlatforms ? undefined : config.platforms;

  const manifests: FetchedManifest[] = [];
  const blobs = new Map<string, { digest: Digest; size: number }>();
  let note = '';
  const visit = async (manifest: FetchedManifest, depth: number): Promise<void> => {
    if (depth > 4) throw new MirrorError(`${ref.text}: indexes nested too deeply`);
    if (isIndexMediaType(manifest.parsed.mediaType)) {
      const all = manifest.parsed.manifests;
      const selected = selectIndexEntries(all, wanted);
      const images = selected.filter((d) => d.annotations?.['vnd.docker.reference.type'] !== 'attestation-manifest');
      if (wanted && all.length > 0 && images.length === 0) {
        const offered = [...new Set(all.filter((d) => d.platform).map((d) => formatPlatform(d.platform)))].join(', ');
        throw new MirrorError(`no ${wanted.map(formatPlatform).join(' or ')} image in the index (it has ${offered || 'no platforms'}); choose with --platform, or --all-platforms`);
      }
      if (depth === 0 && selected.length < all.length) note = `; index kept whole, ${selected.length} of its ${all.length} manifests copied`;
      for (const child of selected) {
        const digest = tryParseDigest(child.digest)!;
        if (manifests.some((m) => m.digest.value === digest.value)) continue;
        await visit(await fetchManifest(client, ref, digest.value, digest), depth + 1);
      }
    } else {
      for (const blob of manifest.parsed.blobs) {
        const digest = tryParseDigest(blob.digest)!;
        blobs.set(digest.value, { digest, size: blob.size });
      }
    }
    manifests.push(manifest);
  };
  await visit(await fetchManifest(client, ref, ref.digest?.value ?? ref.tag!, ref.digest), 0);

  const toFetch: Array<{ digest: Digest; size: number }> = [];
  let present = 0;
  for (const blob of blobs.values()) {
    if (await writer.hasBlob(blob.digest, blob.size)) present++;
    else toFetch.push(blob);
  }
  const bytes = toFetch.reduce((sum, b) => sum + b.size, 0);
  ctx.progress.planned(bytes, toFetch.length, present);
  await eachLimited(toFetch, config.jobs, (blob) => fetchBlob(ctx, client, ref, blob.digest, blob.size));
  const moved = await writer.commitImage(name, [...blobs.values()].map((b) => b.digest), manifests, ref.tag !== undefined ? [ref.tag] : []);
  if (moved.length > 0) note += `; tag ${moved.join(', ')} moved to the new digest`;
  return { name, fetched: toFetch.length, bytes, present, note };
}

export async function runMirror(argv: readonly string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(`usage: stevedore mirror --list images.txt --store DIR|s3://BUCKET[/PREFIX] [--platform OS/ARCH ...|--all-platforms] [--auth-file pull-secret.json] [--keep-registry]\n\noptions (each also read from the environment variable in brackets):\n${optionsHelp(MIRROR_OPTIONS)}\n`);
    return 0;
  }
  const err = (message: string) => process.stderr.write(`stevedore mirror: ${message}\n`);
  let config: MirrorConfig;
  let entries: ImageListEntry[];
  let auths: AuthsEntry[] = [];
  try {
    config = loadMirrorConfig(argv);
    entries = await readImageList(config.list);
    if (config.authFile) {
      try {
        auths = await readAuthsFile(config.authFile);
      } catch (e) {
        throw new ConfigError(`invalid --auth-file (STEVEDORE_AUTH_FILE): ${(e as Error).message}`);
      }
    }
  } catch (e) {
    err((e as Error).message);
    return 2;
  }
  if (entries.length === 0) {
    err(`${config.list} lists no images`);
    return 2;
  }

  const target = await openStoreTarget(config.store, config);
  const storeDir = target.location;
  let writer: StoreWriter;
  try {
    writer = await openStoreWriter(target);
  } catch (e) {
    err(`cannot use --store ${storeDir}: ${describeError(e)}`);
    return 2;
  }

  const log = createLogger('mirror', config.logLevel, process.stderr);
  const clients = new Map<string, UpstreamClient>();
  const progress = new ImageProgress(process.stderr);
  const ctx: MirrorContext = {
    config, writer, progress,
    client(registry) {
      let client = clients.get(registry);
      if (!client) {
        const plain = usesPlainHttp(registry, config.insecureRegistries, auths);
        const endpoint = parseUpstream(plain ? `http://${registry}` : registry);
        client = new UpstreamClient(endpoint, credentialsFor(auths, endpoint), log, config.timeout);
        clients.set(registry, client);
      }
      return client;
    },
  };

  const platforms = config.allPlatforms ? 'all platforms' : config.platforms.map(formatPlatform).join(', ');
  process.stderr.write(`mirroring ${entries.length} image(s) into ${storeDir} (${platforms})\n`);
  const started = Date.now();
  const failures: Array<{ entry: ImageListEntry; reason: string }> = [];
  const storedBy = new Map<string, string>();
  let totalBytes = 0;
  let totalPresent = 0;
  for (const [i, entry] of entries.entries()) {
    const ref = entry.reference;
    const label = `[${i + 1}/${entries.length}] ${ref.text}`;
    progress.start(label);
    const imageStarted = Date.now();
    try {
      const name = storedRepository(ref, config.keepRegistry);
      const key = `${name}:${ref.tag ?? ref.digest!.value}`;
      const previous = storedBy.get(key);
      if (previous && previous !== ref.text) throw new MirrorError(`it would be stored as ${key}, like ${previous} of this list; use --keep-registry to keep registries apart`);
      storedBy.set(key, ref.text);
      const outcome = await mirrorImage(ctx, entry);
      totalBytes += outcome.bytes;
      totalPresent += outcome.present;
      const ms = Date.now() - imageStarted;
      const rate = outcome.bytes > 0 ? `, ${formatBytes(outcome.bytes / Math.max(ms / 1000, 0.001))}/s` : '';
      const target = `${outcome.name}${ref.tag !== undefined ? `:${ref.tag}` : `@${ref.digest!.value}`}`;
      progress.finish(`ok → ${target}: ${outcome.fetched} blob(s) fetched (${formatBytes(outcome.bytes)} in ${formatDuration(ms)}${rate}), ${outcome.present} already present${outcome.note}`);
    } catch (e) {
      const reason = describeError(e);
      failures.push({ entry, reason });
      progress.fail(reason);
    }
  }
  await Promise.all([...clients.values()].map((c) => c.close().catch(() => {})));

  const ok = entries.length - failures.length;
  process.stderr.write(`mirrored ${ok} of ${entries.length} image(s) into ${storeDir}: ${formatBytes(totalBytes)} fetched, ${totalPresent} blob(s) already present, in ${formatDuration(Date.now() - started)}\n`);
  if (failures.length > 0) {
    process.stderr.write(`${failures.length} image(s) failed:\n`);
    for (const { entry, reason } of failures) process.stderr.write(`  ${entry.reference.text} (${config.list}:${entry.line}): ${reason}\n`);
    return 1;
  }
  return 0;
}
