import { join } from 'node:path';
import type { Digest, DigestAlgorithm } from '../oci/digest.js';

/**
 * The layout of a registry store: the only module that names storage keys (and, during the move to
 * the storage driver, the matching file paths under a filesystem root). Every input is
 * a validated repository name, tag, digest or upload id (see lib/oci), so no request text reaches a
 * path unchecked. The cleaner, logger and garbage collector walk this same layout.
 *
 *   <root>/blobs/<alg>/<hex[0..2]>/<hex>                          content: layers, configs, manifests (one copy)
 *   <root>/repositories/<name>/_layers/<alg>/<hex>                empty: <name> may serve that blob
 *   <root>/repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest in <name>; holds its media type
 *   <root>/repositories/<name>/_manifests/tags/<tag>              holds the digest the tag points at
 *   <root>/repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>.json   descriptor of a referrer
 *   <root>/_uploads/<uuid>/data, state.json                       upload sessions in progress
 *   <root>/_tmp/_hosted/                                          temp files of atomic writes
 *
 * A pull-through cache worker keeps its repositories apart from the hosted ones and from other
 * upstreams, under its namespace (the upstream host), while blobs stay shared and stored once:
 *
 *   <root>/cache/<namespace>/<name>/_layers|_manifests|_referrers/...   as under repositories/
 *   <root>/_tmp/<namespace>/                                            its temp files and cache fills
 *
 * Repository components cannot start with `_` (spec grammar), so `_layers` etc. never collide with names.
 */
export class StorageLayout {
  readonly root: string;
  readonly blobsDir: string;
  readonly repositoriesDir: string;
  readonly uploadsDir: string;
  readonly tmpDir: string;

  readonly namespace: string | undefined;

  constructor(root: string, options: { namespace?: string } = {}) {
    this.root = root;
    this.namespace = options.namespace;
    if (options.namespace !== undefined && !NAMESPACE_PATTERN.test(options.namespace)) {
      throw new Error(`invalid cache namespace "${options.namespace}": expected a registry host[:port]`);
    }
    this.blobsDir = join(root, 'blobs');
    this.repositoriesDir = options.namespace === undefined ? join(root, 'repositories') : join(root, 'cache', options.namespace);
    this.uploadsDir = join(root, '_uploads');
    // One temp dir per worker, so one worker's start-up sweep never removes another's in-flight files.
    this.tmpDir = join(root, '_tmp', options.namespace ?? '_hosted');
  }

  blobPath(digest: Digest): string {
    return join(this.blobsDir, digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  repositoryDir(name: string): string {
    return join(this.repositoriesDir, name);
  }

  layerLinkPath(name: string, digest: Digest): string {
    return join(this.repositoriesDir, name, '_layers', digest.algorithm, digest.hex);
  }

  layerLinksDir(name: string, algorithm: DigestAlgorithm): string {
    return join(this.repositoriesDir, name, '_layers', algorithm);
  }

  manifestsDir(name: string): string {
    return join(this.repositoriesDir, name, '_manifests');
  }

  manifestRevisionPath(name: string, digest: Digest): string {
    return join(this.repositoriesDir, name, '_manifests', 'revisions', digest.algorithm, digest.hex);
  }

  manifestRevisionsDir(name: string, algorithm: DigestAlgorithm): string {
    return join(this.repositoriesDir, name, '_manifests', 'revisions', algorithm);
  }

  tagsDir(name: string): string {
    return join(this.repositoriesDir, name, '_manifests', 'tags');
  }

  tagPath(name: string, tag: string): string {
    return join(this.repositoriesDir, name, '_manifests', 'tags', tag);
  }

  // --- Storage keys (StorageDriver): relative, '/'-separated; on the filesystem `<root>/<key>`. ---

  /** `repositories/` (hosted) or `cache/<namespace>/`: every repository of this store is under it. */
  get repositoriesPrefix(): string {
    return this.namespace === undefined ? 'repositories/' : `cache/${this.namespace}/`;
  }

  blobKey(digest: Digest): string {
    return `blobs/${digest.algorithm}/${digest.hex.slice(0, 2)}/${digest.hex}`;
  }

  /** Every key of repository `name` is under this prefix (ends with `/`). */
  repositoryPrefix(name: string): string {
    return `${this.repositoriesPrefix}${name}/`;
  }

  layerLinkKey(name: string, digest: Digest): string {
    return `${this.repositoriesPrefix}${name}/_layers/${digest.algorithm}/${digest.hex}`;
  }

  layerLinksPrefix(name: string, algorithm: DigestAlgorithm): string {
    return `${this.repositoriesPrefix}${name}/_layers/${algorithm}/`;
  }

  manifestRevisionKey(name: string, digest: Digest): string {
    return `${this.repositoriesPrefix}${name}/_manifests/revisions/${digest.algorithm}/${digest.hex}`;
  }

  manifestRevisionsPrefix(name: string, algorithm: DigestAlgorithm): string {
    return `${this.repositoriesPrefix}${name}/_manifests/revisions/${algorithm}/`;
  }

  tagsPrefix(name: string): string {
    return `${this.repositoriesPrefix}${name}/_manifests/tags/`;
  }

  tagKey(name: string, tag: string): string {
    return `${this.repositoriesPrefix}${name}/_manifests/tags/${tag}`;
  }

  referrersPrefix(name: string, subject: Digest): string {
    return `${this.repositoriesPrefix}${name}/_referrers/${subject.algorithm}/${subject.hex}/`;
  }

  referrerKey(name: string, subject: Digest, referrer: Digest): string {
    return `${this.referrersPrefix(name, subject)}${referrer.algorithm}-${referrer.hex}.json`;
  }

  // --- Lease names (lib/storage/lease.ts, under `_state/leases/`) of cross-appliance fills. ---
  // The repository name is one component (`/` encoded), so `a/b`'s leases never nest under `a`'s;
  // tags and digests are validated and contain no `/`. The namespace (upstream host) keeps upstreams apart.

  /** The lease on fetching manifest `digest` of `name` from the upstream: `fills/manifests/<ns>/<name>/<alg>-<hex>`. */
  manifestFillLease(name: string, digest: Digest): string {
    return `fills/manifests/${this.namespace ?? '_hosted'}/${encodeURIComponent(name)}/${digest.algorithm}-${digest.hex}`;
  }

  /** The lease on fetching or revalidating tag `tag` of `name` upstream: `fills/tags/<ns>/<name>/<tag>`. */
  tagFillLease(name: string, tag: string): string {
    return `fills/tags/${this.namespace ?? '_hosted'}/${encodeURIComponent(name)}/${tag}`;
  }

  uploadDataPath(uploadId: string): string {
    return join(this.uploadsDir, uploadId, 'data');
  }

  uploadStatePath(uploadId: string): string {
    return join(this.uploadsDir, uploadId, 'state.json');
  }
}

/** Every blob's key is under this prefix. */
export const BLOBS_PREFIX = 'blobs/';
/** The hosted repositories' keys, and the pull-through caches' (`cache/<namespace>/<name>/...`). */
export const HOSTED_PREFIX = 'repositories/';
export const CACHE_PREFIX = 'cache/';

/** A registry host with an optional port: safe as one directory name (no `/`, no `..`). */
export const NAMESPACE_PATTERN = /^(?=.*[a-z0-9])[a-z0-9]+(?:[.-][a-z0-9]+)*(?::\d{1,5})?$/;

/** Upload ids are UUIDs we mint; anything else in a request is unknown, never a path. */
export const UPLOAD_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
