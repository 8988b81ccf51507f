import { createReadStream } from 'node:fs';
import { chmod, mkdir, open, stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDigester, digestOf, type Digest } from '../oci/digest.js';
import { isRegistryError } from '../oci/errors.js';
import type { ParsedManifest } from '../oci/manifest.js';
import type { StorageLayout } from '../storage/layout.js';

/**
 * Writes a hosted store the way the registry does, through its BlobStore and ManifestStore (passed
 * in, so lib/ does not depend on services/): blobs are verified against their digest before they are
 * renamed into place; an image becomes visible (blob links, manifests, then tags, last) only once
 * every blob it needs is stored. A refused image leaves at most verified, unreferenced blobs behind,
 * which garbage collection removes.
 */

/** What StoreWriter needs of services/registry/src/store/blob-store.ts (BlobStore satisfies it). */
export interface BlobStoreLike {
  stat(digest: Digest): Promise<{ size: number } | undefined>;
  writeVerified(source: Readable, expected: Digest, expectedSize?: number): Promise<number>;
  commitVerified(verifiedPath: string, digest: Digest): Promise<void>;
  link(name: string, digest: Digest): Promise<void>;
}

/** What StoreWriter needs of services/registry/src/store/manifest-store.ts (ManifestStore satisfies it). */
export interface ManifestStoreLike {
  putCached(name: string, digest: Digest, body: Buffer, contentType: string | undefined, tag?: string): Promise<ParsedManifest>;
  resolveTag(name: string, tag: string): Promise<Digest | undefined>;
}

/** A refusal with a message meant for the operator (names the blob, file or image concerned). */
export class AirgapError extends Error {}

export interface ManifestToStore {
  digest: Digest;
  body: Buffer;
  mediaType: string;
}

export class StoreWriter {
  constructor(readonly layout: StorageLayout, private readonly blobs: BlobStoreLike, private readonly manifests: ManifestStoreLike) {}

  async ensureDirs(): Promise<void> {
    await mkdir(this.layout.blobsDir, { recursive: true });
    await mkdir(this.layout.repositoriesDir, { recursive: true });
    await mkdir(this.layout.tmpDir, { recursive: true });
  }

  /**
   * Whether the store has the blob. Stored blobs were verified before they were renamed into place,
   * so presence is enough; a size that disagrees with the descriptor means the store was damaged.
   */
  async hasBlob(digest: Digest, size?: number): Promise<boolean> {
    const info = await this.blobs.stat(digest);
    if (!info) return false;
    if (size !== undefined && info.size !== size) {
      throw new AirgapError(`the store's blob ${digest.value} has ${info.size} bytes where ${size} are expected: the store is damaged (remove ${this.layout.blobPath(digest)} and run again)`);
    }
    return true;
  }

  /** Streams a blob into the store, verified against digest and size; `what` names its origin in errors. */
  async writeStream(digest: Digest, source: Readable, size: number | undefined, what: string): Promise<number> {
    try {
      return await this.blobs.writeVerified(source, digest, size);
    } catch (err) {
      throw describeBlobError(err, digest, what);
    }
  }

  /**
   * Imports a blob from a file of the input. `move`: the file is a temp file of this store's
   * filesystem (an extracted archive) and is renamed into place once verified instead of copied.
   */
  async importFile(digest: Digest, path: string, size: number | undefined, move: boolean, what: string): Promise<void> {
    if (!move) {
      await this.writeStream(digest, createReadStream(path, { highWaterMark: 1024 * 1024 }), size, what);
      return;
    }
    const actual = await hashFile(path, digest);
    const info = await stat(path);
    if (size !== undefined && info.size !== size) {
      throw new AirgapError(`blob ${digest.value} (${what}) is corrupt: it has ${info.size} bytes, its descriptor says ${size}`);
    }
    if (actual.value !== digest.value) {
      throw new AirgapError(`blob ${digest.value} (${what}) is corrupt: its content hashes to ${actual.value}`);
    }
    await chmod(path, 0o644);
    const handle = await open(path, 'r');
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
    await this.blobs.commitVerified(path, digest);
  }

  /**
   * Makes an image visible under `name`: links its blobs (all of which must be stored by now),
   * stores its manifests (children before the index that lists them), then points the tags at the
   * top manifest, the last one of `manifests`. Returns the tags that moved from another digest.
   */
  async commitImage(name: string, blobs: Iterable<Digest>, manifests: ManifestToStore[], tags: readonly string[]): Promise<string[]> {
    for (const digest of blobs) {
      if (!(await this.blobs.stat(digest))) throw new AirgapError(`blob ${digest.value} of ${name} is missing from the store`);
      await this.blobs.link(name, digest);
    }
    const top = manifests[manifests.length - 1];
    if (!top) throw new AirgapError(`nothing to store for ${name}`);
    for (const manifest of manifests) await this.manifests.putCached(name, manifest.digest, manifest.body, manifest.mediaType);
    const moved: string[] = [];
    for (const tag of new Set(tags)) {
      const previous = await this.manifests.resolveTag(name, tag);
      if (previous && previous.value !== top.digest.value) moved.push(tag);
      await this.manifests.putCached(name, top.digest, top.body, top.mediaType, tag);
    }
    return moved;
  }
}

export async function hashFile(path: string, like: Digest): Promise<Digest> {
  const hash = createDigester(like.algorithm);
  await pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) hash.update(chunk);
  });
  const hex = hash.digest('hex');
  return { algorithm: like.algorithm, hex, value: `${like.algorithm}:${hex}` };
}

/** Verifies a manifest body against the digest it is known by. */
export function checkManifestDigest(body: Buffer, digest: Digest, what: string): void {
  const actual = digestOf(body, digest.algorithm);
  if (actual.value !== digest.value) throw new AirgapError(`manifest ${digest.value} (${what}) is corrupt: its content hashes to ${actual.value}`);
}

function describeBlobError(err: unknown, digest: Digest, what: string): Error {
  if (isRegistryError(err)) {
    const detail = err.detail as { actual?: string; received?: number; expected?: number } | undefined;
    if (err.code === 'DIGEST_INVALID') return new AirgapError(`blob ${digest.value} (${what}) is corrupt: its content hashes to ${detail?.actual ?? 'something else'}`);
    if (err.code === 'SIZE_INVALID') return new AirgapError(`blob ${digest.value} (${what}) is corrupt: it has ${detail?.received ?? '?'} bytes, its descriptor says ${detail?.expected ?? '?'}`);
  }
  return err instanceof Error ? err : new Error(String(err));
}
