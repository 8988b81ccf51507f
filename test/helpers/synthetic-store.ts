import { randomBytes } from 'node:crypto';
import { mkdir, open, utimes, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { digestOf, type Digest } from '../../lib/oci/digest.js';
import { FilesystemDriver } from '../../lib/storage/driver/filesystem.js';
import { StorageLayout } from '../../lib/storage/layout.js';
import { ServedBatchWriter } from '../../lib/storage/served-index.js';

/**
 * Builds stores directly in the on-disk layout (lib/storage/layout.ts), without a registry worker:
 * for the cleaner and GC unit tests and the storage benchmark.
 */

const MANIFEST_TYPE = 'application/vnd.oci.image.manifest.v1+json';
const LAYER_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';
const CONFIG_TYPE = 'application/vnd.oci.image.config.v1+json';

/** writeFile, creating the parent directories when they are missing (tried first: most already exist). */
export async function writeCreatingDir(path: string, data: string | Buffer): Promise<void> {
  try {
    await writeFile(path, data);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, data);
  }
}

export interface StoredBlob {
  digest: Digest;
  size: number;
}

export class SyntheticStore {
  readonly hosted: StorageLayout;
  /** The filesystem driver on `root` (what the cleaner and GC are given). */
  readonly driver: FilesystemDriver;
  private readonly served: ServedBatchWriter;
  /** Served times not written yet: an image's blobs go into one batch, as the logger would write them. */
  private pendingServed = new Map<string, number>();
  private batching = 0;

  constructor(readonly root: string) {
    this.hosted = new StorageLayout(root);
    this.driver = new FilesystemDriver(root);
    this.served = new ServedBatchWriter(this.driver, 'synthetic');
  }

  cache(namespace: string): StorageLayout {
    return new StorageLayout(this.root, { namespace });
  }

  /** Stores a blob (random bytes of `size`, or `data`); times in ms since the epoch when given. */
  async blob(content: number | Buffer, times?: { atimeMs: number; mtimeMs?: number }): Promise<StoredBlob> {
    const data = typeof content === 'number' ? randomBytes(content) : content;
    const digest = digestOf(data);
    const path = this.hosted.blobPath(digest);
    await writeCreatingDir(path, data);
    if (times) await this.setTimes(digest, times.atimeMs, times.mtimeMs ?? times.atimeMs);
    return { digest, size: data.length };
  }

  /** `atimeMs`: when it was last served (a served-index entry, as the logger writes); `mtimeMs`: when it was stored. */
  async setTimes(digest: Digest, atimeMs: number, mtimeMs: number = atimeMs): Promise<void> {
    await utimes(this.hosted.blobPath(digest), new Date(atimeMs), new Date(mtimeMs));
    this.pendingServed.set(digest.value, Math.max(atimeMs, this.pendingServed.get(digest.value) ?? -Infinity));
    if (this.batching === 0) await this.flushServed();
  }

  /** Writes the pending served times as one batch. */
  async flushServed(): Promise<void> {
    const batch = this.pendingServed;
    this.pendingServed = new Map();
    await this.served.write(batch);
  }

  /** Links a blob into a repository; `timeMs` dates the link (when it was pushed), default now. */
  async link(layout: StorageLayout, repo: string, digest: Digest, timeMs?: number): Promise<void> {
    const path = layout.layerLinkPath(repo, digest);
    await mkdir(dirname(path), { recursive: true });
    await (await open(path, 'a')).close();
    if (timeMs !== undefined) await utimes(path, new Date(timeMs), new Date(timeMs));
  }

  /**
   * Stores an image manifest for `config` and `layers` in `repo` of `layout` (hosted or a cache
   * namespace): manifest blob, revision, optional tag, and links to config and layers.
   */
  async manifest(layout: StorageLayout, repo: string, config: StoredBlob, layers: StoredBlob[], options: { tag?: string; times?: { atimeMs: number; mtimeMs?: number }; link?: boolean } = {}): Promise<StoredBlob> {
    const body = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: MANIFEST_TYPE,
      config: { mediaType: CONFIG_TYPE, digest: config.digest.value, size: config.size },
      layers: layers.map((l) => ({ mediaType: LAYER_TYPE, digest: l.digest.value, size: l.size })),
    }));
    const manifest = await this.blob(body, options.times);
    await writeCreatingDir(layout.manifestRevisionPath(repo, manifest.digest), MANIFEST_TYPE);
    if (options.tag !== undefined) await writeCreatingDir(layout.tagPath(repo, options.tag), manifest.digest.value);
    const linkedAt = options.times ? options.times.mtimeMs ?? options.times.atimeMs : undefined;
    if (options.link !== false) for (const b of [config, ...layers]) await this.link(layout, repo, b.digest, linkedAt);
    return manifest;
  }

  /** A whole image: config + layers of the given sizes, then its manifest; all blobs get `times`. */
  async image(layout: StorageLayout, repo: string, layerSizes: number[], options: { tag?: string; times?: { atimeMs: number; mtimeMs?: number }; shared?: StoredBlob[] } = {}): Promise<{ manifest: StoredBlob; config: StoredBlob; layers: StoredBlob[]; all: StoredBlob[] }> {
    this.batching++;
    try {
      return await this.buildImage(layout, repo, layerSizes, options);
    } finally {
      if (--this.batching === 0) await this.flushServed();
    }
  }

  private async buildImage(layout: StorageLayout, repo: string, layerSizes: number[], options: { tag?: string; times?: { atimeMs: number; mtimeMs?: number }; shared?: StoredBlob[] }): Promise<{ manifest: StoredBlob; config: StoredBlob; layers: StoredBlob[]; all: StoredBlob[] }> {
    const config = await this.blob(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', seed: randomBytes(8).toString('hex') })), options.times);
    const layers = [...(options.shared ?? [])];
    for (const size of layerSizes) layers.push(await this.blob(size, options.times));
    const manifest = await this.manifest(layout, repo, config, layers, { ...(options.tag === undefined ? {} : { tag: options.tag }), ...(options.times ? { times: options.times } : {}) });
    return { manifest, config, layers, all: [manifest, config, ...layers] };
  }
}
