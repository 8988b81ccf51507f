import { createReadStream } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createDigester, digestOf, type Digest } from '../oci/digest.js';
import { isRegistryError } from '../oci/errors.js';
import type { StoreTarget } from './store-target.js';

/**
 * Writes a hosted store the way the registry does, through the store's driver (StoreTarget): blobs
 * are verified against their digest before they become visible; an image becomes visible (blob
 * links, manifests, then tags, last) only once every blob it needs is stored. A refused image
 * leaves at most verified, unreferenced blobs behind, which garbage collection removes.
 */

/** A refusal with a message meant for the operator (names the blob, file or image concerned). */
export class AirgapError extends Error {}

export interface ManifestToStore {
  digest: Digest;
  body: Buffer;
  mediaType: string;
}

export class StoreWriter {
  constructor(readonly target: StoreTarget) {}

  /**
   * Whether the store has the blob. Stored blobs were verified before they became visible, so
   * presence is enough; a size that disagrees with the descriptor means the store was damaged.
   */
  async hasBlob(digest: Digest, size?: number): Promise<boolean> {
    const stored = await this.target.blobSize(digest);
    if (stored === undefined) return false;
    if (size !== undefined && stored !== size) {
      throw new AirgapError(`the store's blob ${digest.value} has ${stored} bytes where ${size} are expected: the store is damaged (remove ${this.target.layout.blobKey(digest)} from ${this.target.location} and run again)`);
    }
    return true;
  }

  /** Streams a blob into the store, verified against digest and size; `what` names its origin in errors. */
  async writeStream(digest: Digest, source: Readable, size: number | undefined, what: string): Promise<number> {
    try {
      return await this.target.writeBlob(digest, source, size);
    } catch (err) {
      throw describeBlobError(err, digest, what);
    }
  }

  /**
   * Imports a blob from a file of the input. `move`: the file was extracted under the store's
   * extractionDir (same filesystem) and is renamed into place once verified instead of copied.
   */
  async importFile(digest: Digest, path: string, size: number | undefined, move: boolean, what: string): Promise<void> {
    if (!move || this.target.extractionDir === undefined) {
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
    const handle = await open(path, 'r');
    try {
      await handle.chmod(0o644);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await this.target.commitVerifiedFile(path, digest);
  }

  /**
   * Makes an image visible under `name`: links its blobs (all of which must be stored by now),
   * stores its manifests (children before the index that lists them), then points the tags at the
   * top manifest, the last one of `manifests`. Returns the tags that moved from another digest.
   */
  async commitImage(name: string, blobs: Iterable<Digest>, manifests: ManifestToStore[], tags: readonly string[]): Promise<string[]> {
    for (const digest of blobs) {
      if ((await this.target.blobSize(digest)) === undefined) throw new AirgapError(`blob ${digest.value} of ${name} is missing from the store`);
      await this.target.linkBlob(name, digest);
    }
    const top = manifests[manifests.length - 1];
    if (!top) throw new AirgapError(`nothing to store for ${name}`);
    for (const manifest of manifests) await this.target.putManifest(name, manifest.digest, manifest.body, manifest.mediaType);
    const moved: string[] = [];
    for (const tag of new Set(tags)) {
      const previous = await this.target.readTag(name, tag);
      if (previous && previous.value !== top.digest.value) moved.push(tag);
      await this.target.putTag(name, tag, top.digest);
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
    const detail = err.detail as { actual?: string | number; received?: number; expected?: string | number } | undefined;
    if (err.code === 'DIGEST_INVALID') return new AirgapError(`blob ${digest.value} (${what}) is corrupt: its content hashes to ${detail?.actual ?? 'something else'}`);
    if (err.code === 'SIZE_INVALID') return new AirgapError(`blob ${digest.value} (${what}) is corrupt: it has ${detail?.actual ?? detail?.received ?? '?'} bytes, its descriptor says ${detail?.expected ?? '?'}`);
  }
  return err instanceof Error ? err : new Error(String(err));
}
