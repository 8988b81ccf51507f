import { tryParseDigest, type Digest } from '../oci/digest.js';
import { isRegistryError } from '../oci/errors.js';
import { parseManifest, type ParsedManifest } from '../oci/manifest.js';
import { isIndexMediaType } from '../oci/media-types.js';
import { AirgapError, checkManifestDigest, type ManifestToStore, type StoreWriter } from './store-writer.js';

/** One image (or index) an input offers, and where it goes in the store. */
export interface SeedImage {
  /** How the input names it, for messages (a RepoTag, a ref.name, a path). */
  label: string;
  /** The repository in the input (what readManifest/blobFile are asked for). */
  sourceName: string;
  /** The repository it is stored under. */
  name: string;
  tags: string[];
  digest: Digest;
  mediaType: string | undefined;
}

/** An input of `stevedore seed`: an OCI layout, a docker-archive, a registry directory, an export. */
export interface SeedSource {
  /** What the input is, e.g. "OCI image layout". */
  kind: string;
  images: SeedImage[];
  /** Entries of the input that cannot be imported, with the reason (found while listing it). */
  problems: Array<{ label: string; reason: string }>;
  /** The body of manifest `digest` of repository `sourceName`, undefined when the input lacks it. */
  readManifest(sourceName: string, digest: Digest): Promise<Buffer | undefined>;
  /** The file holding blob `digest` of repository `sourceName`, undefined when the input lacks it. */
  blobFile(sourceName: string, digest: Digest): Promise<string | undefined>;
  /** Files may be renamed into the store (they were extracted to a temp dir of the store). */
  movable: boolean;
}

export interface ImportResult {
  blobsImported: number;
  blobsPresent: number;
  bytesImported: number;
  /** Index entries the input does not have (e.g. a platform-filtered mirror): the index is kept whole. */
  skippedChildren: string[];
  movedTags: string[];
}

/** Media type of a manifest body: what the descriptor said, else what the body declares. */
function parseWithType(body: Buffer, mediaType: string | undefined, what: string): ParsedManifest {
  try {
    return parseManifest(body, mediaType);
  } catch (err) {
    if (isRegistryError(err)) throw new AirgapError(`${what}: ${err.message}`);
    throw err;
  }
}

/**
 * Imports one image of a seed input: every manifest verified against its digest, every blob it
 * needs present in the input (or the store) before anything is written, each blob verified as it
 * is stored, and only then the links, manifests and tags (StoreWriter.commitImage).
 */
export async function importSeedImage(writer: StoreWriter, source: SeedSource, image: SeedImage): Promise<ImportResult> {
  const manifests: ManifestToStore[] = [];
  const blobs = new Map<string, { digest: Digest; size: number; what: string }>();
  const skippedChildren: string[] = [];
  const visited = new Set<string>();

  const visit = async (digest: Digest, mediaType: string | undefined, what: string, depth: number): Promise<boolean> => {
    if (visited.has(digest.value)) return true;
    if (depth > 8) throw new AirgapError(`${what}: indexes nested too deeply`);
    const body = await source.readManifest(image.sourceName, digest);
    if (!body) return false;
    checkManifestDigest(body, digest, what);
    const parsed = parseWithType(body, mediaType, `manifest ${digest.value} (${what})`);
    visited.add(digest.value);
    if (isIndexMediaType(parsed.mediaType)) {
      let present = 0;
      for (const child of parsed.manifests) {
        const childDigest = tryParseDigest(child.digest)!;
        if (await visit(childDigest, child.mediaType, `${what}, entry ${child.digest}`, depth + 1)) present++;
        else skippedChildren.push(child.digest);
      }
      if (present === 0 && parsed.manifests.length > 0) {
        throw new AirgapError(`index ${digest.value} (${what}): none of the ${parsed.manifests.length} manifests it lists is in the input`);
      }
    } else {
      for (const blob of parsed.blobs) {
        const blobDigest = tryParseDigest(blob.digest)!;
        if (!blobs.has(blobDigest.value)) blobs.set(blobDigest.value, { digest: blobDigest, size: blob.size, what: `${what}, ${blob.mediaType}` });
      }
    }
    manifests.push({ digest, body, mediaType: parsed.mediaType });
    return true;
  };
  if (!(await visit(image.digest, image.mediaType, image.label, 0))) {
    throw new AirgapError(`manifest ${image.digest.value} (${image.label}) is missing from the input`);
  }

  // Every blob must be at hand before the first one is written.
  const toImport: Array<{ digest: Digest; size: number; what: string; path: string }> = [];
  let blobsPresent = 0;
  const missing: string[] = [];
  for (const blob of blobs.values()) {
    if (await writer.hasBlob(blob.digest, blob.size)) {
      blobsPresent++;
      continue;
    }
    const path = await source.blobFile(image.sourceName, blob.digest);
    if (path === undefined) missing.push(`${blob.digest.value} (${blob.what})`);
    else toImport.push({ ...blob, path });
  }
  if (missing.length > 0) {
    throw new AirgapError(`${image.label}: ${missing.length} blob(s) missing from the input: ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
  }
  let bytesImported = 0;
  let blobsImported = 0;
  for (const blob of toImport) {
    // A blob shared by two images of this input may have been stored (moved) by the first one.
    if (await writer.hasBlob(blob.digest, blob.size)) {
      blobsPresent++;
      continue;
    }
    await writer.importFile(blob.digest, blob.path, blob.size, source.movable, `${blob.what}, ${blob.path}`);
    bytesImported += blob.size;
    blobsImported++;
  }
  const movedTags = await writer.commitImage(image.name, [...blobs.values()].map((b) => b.digest), manifests, image.tags);
  return { blobsImported, blobsPresent, bytesImported, skippedChildren, movedTags };
}
