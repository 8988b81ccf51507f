import type { AppliancePlan, WorkerPlan } from '../../../../lib/appliance.js';
import { tryParseDigest, type Digest } from '../../../../lib/oci/digest.js';
import { descriptorDigest, parseManifest, type Descriptor, type ParsedManifest } from '../../../../lib/oci/manifest.js';
import { isIndexMediaType } from '../../../../lib/oci/media-types.js';
import { isValidName, isValidTag } from '../../../../lib/oci/reference.js';
import { isStorageNotFound, listAll, type StorageDriver } from '../../../../lib/storage/driver/driver.js';
import { scanRepositories } from '../../../../lib/storage/inventory.js';
import { StorageLayout } from '../../../../lib/storage/layout.js';
import { ManifestReader } from '../../../../lib/storage/manifest-reader.js';
import { readServedTimes, type ServedTimes } from '../../../../lib/storage/served-index.js';
import { ReusedValue } from './reused-value.js';

/** "hosted", or the upstream host of a cache worker. */
export type Source = string;

export interface RepositoryRow {
  source: Source;
  name: string;
  tags: number;
}

export interface TagRow {
  tag: string;
  digest: string;
  mediaType: string;
  /** Manifest + config + layers of an image; manifest + every stored child's total for an index. */
  size: number;
  /** `os/arch[/variant]` of each manifest an index lists. */
  platforms?: string[];
  /** The image config's `created` (an index: its first child's). */
  created?: string;
  /** When the manifest was last served (the served index the logger writes, else when it was stored), ISO. */
  lastServed?: string;
}

export interface ImageView {
  source: Source;
  repository: string;
  digest: string;
  mediaType: string;
  size: number;
  lastServed?: string;
  config?: { digest: string; size: number; mediaType: string; stored: boolean; created?: string; os?: string; architecture?: string };
  layers: Array<{ digest: string; size: number; mediaType: string; stored: boolean; lastServed?: string }>;
  manifests: Array<{ digest: string; size: number; mediaType: string; platform?: string }>;
}

const REPOSITORY_LIST_TTL_MS = 5_000;
/** An image config is read (for `created`) only up to this size. */
const CONFIG_READ_MAX = 1024 * 1024;

/** How long the served index (one listing plus a few small reads) is reused. */
const SERVED_MAX_AGE_MS = 10_000;

function platformOf(descriptor: Descriptor): string | undefined {
  const p = descriptor.platform;
  if (!p || typeof p.os !== 'string' || typeof p.architecture !== 'string') return undefined;
  return [p.os, p.architecture, typeof p.variant === 'string' ? p.variant : undefined].filter(Boolean).join('/');
}

/**
 * What the console shows of the store, read through lib/storage (the same layout and manifest
 * reader as the workers): hosted and cached repositories, their tags, an image's parts.
 */
export class StoreView {
  private readonly sources = new Map<Source, { layout: StorageLayout; reader: ManifestReader; worker: WorkerPlan }>();
  private readonly blobs: StorageLayout;
  private readonly repositoryList = new ReusedValue(() => this.walkRepositories(), REPOSITORY_LIST_TTL_MS);
  private readonly served: ReusedValue<ServedTimes>;

  constructor(root: string, plan: AppliancePlan, private readonly driver: StorageDriver) {
    this.blobs = new StorageLayout(root);
    this.sources.set('hosted', { layout: this.blobs, reader: new ManifestReader(driver, this.blobs), worker: plan.hosted });
    for (const worker of plan.proxies) {
      const layout = new StorageLayout(root, { namespace: worker.upstream! });
      this.sources.set(worker.upstream!, { layout, reader: new ManifestReader(driver, layout), worker });
    }
    this.served = new ReusedValue(() => readServedTimes(driver), SERVED_MAX_AGE_MS);
  }

  private statBlob(digest: Digest): Promise<{ size: number; modifiedMs: number } | undefined> {
    return this.driver.stat(this.blobs.blobKey(digest)).then((info) => ({ size: info.size, modifiedMs: info.modifiedAt.getTime() }),
      (err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err)));
  }

  /** Last served: the served index's time, else when the blob was stored (as the cleaner decides). */
  private async lastServedOf(digest: Digest, info: { modifiedMs: number }): Promise<string> {
    const served = (await this.served.get().catch(() => new Map<string, number>())).get(digest.value);
    return new Date(Math.max(served ?? info.modifiedMs, info.modifiedMs)).toISOString();
  }

  sourceNames(): Source[] {
    return [...this.sources.keys()];
  }

  /** The worker that serves `source` (for admin actions), or undefined for an unknown source. */
  workerOf(source: Source): WorkerPlan | undefined {
    return this.sources.get(source)?.worker;
  }

  /**
   * Every repository of every source, by source then name; one walk, reused for a few seconds. Once
   * older, the last list is answered at once while a new walk runs (on a large store a walk takes
   * seconds: a browsing user must not wait for each); after forget() the next call waits.
   */
  repositories(): Promise<RepositoryRow[]> {
    return this.repositoryList.get();
  }

  /** Forget the repository list (after an admin action changed it). */
  forget(): void {
    this.repositoryList.forget();
  }

  private async walkRepositories(): Promise<RepositoryRow[]> {
    const rows: RepositoryRow[] = [];
    const scans = await Promise.all([...this.sources.values()].map(({ layout }) => scanRepositories(this.driver, layout)));
    [...this.sources.keys()].forEach((source, i) => {
      for (const repository of scans[i]!) {
        const tags = repository.tags.filter(isValidTag).length;
        // A cached repository without tags is what a purge leaves (links until GC): nothing to pull
        // by name, so it is not listed. A hosted one stays: it may hold untagged manifests.
        if (tags === 0 && source !== 'hosted') continue;
        rows.push({ source, name: repository.name, tags });
      }
    });
    return rows;
  }

  private source(source: Source, repository: string): { layout: StorageLayout; reader: ManifestReader; worker: WorkerPlan } | undefined {
    if (!isValidName(repository)) return undefined;
    return this.sources.get(source);
  }

  /** Tag names of a repository, sorted; undefined when the source or repository is unknown. */
  async tagNames(source: Source, repository: string): Promise<string[] | undefined> {
    const found = this.source(source, repository);
    if (!found) return undefined;
    const prefix = found.layout.tagsPrefix(repository);
    const names = (await listAll(this.driver, prefix)).keys.map((info) => info.key.slice(prefix.length));
    if (names.length === 0) return (await this.driver.list(found.layout.repositoryPrefix(repository), { limit: 1 })).keys.length > 0 ? [] : undefined;
    return names.filter(isValidTag).sort();
  }

  private async manifestOf(reader: ManifestReader, repository: string, digest: Digest): Promise<{ mediaType: string; body: Buffer; parsed: ParsedManifest | undefined } | undefined> {
    const stored = await reader.find(repository, { kind: 'digest', digest });
    if (!stored) return undefined;
    let parsed: ParsedManifest | undefined;
    try {
      parsed = parseManifest(stored.body, stored.mediaType);
    } catch {
      parsed = undefined;
    }
    return { mediaType: stored.mediaType, body: stored.body, parsed };
  }

  private async lastServed(digest: Digest): Promise<string | undefined> {
    const info = await this.statBlob(digest);
    return info ? this.lastServedOf(digest, info) : undefined;
  }

  private async configCreated(descriptor: Descriptor): Promise<{ created?: string; os?: string; architecture?: string; stored: boolean }> {
    const digest = descriptorDigest(descriptor);
    const info = await this.statBlob(digest);
    if (!info) return { stored: false };
    if (info.size > CONFIG_READ_MAX) return { stored: true };
    try {
      const json = JSON.parse((await this.driver.getContent(this.blobs.blobKey(digest))).toString('utf8')) as Record<string, unknown>;
      const out: { created?: string; os?: string; architecture?: string; stored: boolean } = { stored: true };
      if (typeof json.created === 'string') out.created = json.created;
      if (typeof json.os === 'string') out.os = json.os;
      if (typeof json.architecture === 'string') out.architecture = json.architecture;
      return out;
    } catch {
      return { stored: true };
    }
  }

  /** One tag's row; undefined when the tag or its manifest is gone. */
  async tag(source: Source, repository: string, tag: string): Promise<TagRow | undefined> {
    const found = this.source(source, repository);
    if (!found || !isValidTag(tag)) return undefined;
    const digest = await found.reader.resolveTag(repository, tag);
    if (!digest) return undefined;
    const manifest = await this.manifestOf(found.reader, repository, digest);
    if (!manifest) return undefined;
    const row: TagRow = { tag, digest: digest.value, mediaType: manifest.mediaType, size: manifest.body.length };
    const served = await this.lastServed(digest);
    if (served) row.lastServed = served;
    const parsed = manifest.parsed;
    if (!parsed) return row;
    if (isIndexMediaType(parsed.mediaType)) {
      row.platforms = parsed.manifests.map(platformOf).filter((p): p is string => Boolean(p));
      let first = true;
      for (const child of parsed.manifests) {
        row.size += child.size;
        const childManifest = await this.manifestOf(found.reader, repository, descriptorDigest(child));
        if (!childManifest?.parsed) continue;
        row.size += childManifest.parsed.blobs.reduce((sum, b) => sum + b.size, 0);
        if (first && childManifest.parsed.blobs[0]) {
          const created = (await this.configCreated(childManifest.parsed.blobs[0])).created;
          if (created) row.created = created;
          first = false;
        }
      }
    } else {
      row.size += parsed.blobs.reduce((sum, b) => sum + b.size, 0);
      if (parsed.blobs[0]) {
        const config = await this.configCreated(parsed.blobs[0]);
        if (config.created) row.created = config.created;
        if (config.os && config.architecture) row.platforms = [`${config.os}/${config.architecture}`];
      }
    }
    return row;
  }

  /** A manifest's parts (config and layers, or an index's manifests); undefined when unknown. */
  async image(source: Source, repository: string, digestText: string): Promise<ImageView | undefined> {
    const found = this.source(source, repository);
    const digest = tryParseDigest(digestText);
    if (!found || !digest) return undefined;
    const manifest = await this.manifestOf(found.reader, repository, digest);
    if (!manifest) return undefined;
    const view: ImageView = { source, repository, digest: digest.value, mediaType: manifest.mediaType, size: manifest.body.length, layers: [], manifests: [] };
    const served = await this.lastServed(digest);
    if (served) view.lastServed = served;
    const parsed = manifest.parsed;
    if (!parsed) return view;
    if (isIndexMediaType(parsed.mediaType)) {
      view.manifests = parsed.manifests.map((m) => ({ digest: m.digest, size: m.size, mediaType: m.mediaType, ...(platformOf(m) ? { platform: platformOf(m)! } : {}) }));
      return view;
    }
    const [config, ...layers] = parsed.blobs;
    if (config) {
      const details = await this.configCreated(config);
      view.config = { digest: config.digest, size: config.size, mediaType: config.mediaType, ...details };
    }
    view.layers = await Promise.all(layers.map(async (layer) => {
      const digest = descriptorDigest(layer);
      const info = await this.statBlob(digest);
      return { digest: layer.digest, size: layer.size, mediaType: layer.mediaType, stored: Boolean(info), ...(info ? { lastServed: await this.lastServedOf(digest, info) } : {}) };
    }));
    return view;
  }
}
