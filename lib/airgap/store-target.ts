import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { descriptorDigest, parseManifest, type Descriptor } from '../oci/manifest.js';
import { commitFile } from '../storage/atomic.js';
import { isStorageNotFound, type StorageDriver } from '../storage/driver/driver.js';
import { FilesystemDriver } from '../storage/driver/filesystem.js';
import { StorageLayout } from '../storage/layout.js';

/**
 * The only part of the air-gap commands that touches the store: the operations mirror, seed and
 * export need, on the storage driver and the layout's keys. The rest (StoreWriter, the importer,
 * the export's tar writer) works on these, so this module alone changes when the hosted stores of
 * lib/storage take over (writeBlob → BlobStore, putManifest/putTag → ManifestStore.putCached, ...).
 */
export class StoreTarget {
  /** The hosted store's keys (no namespace): mirror and seed fill, export reads `repositories/`. */
  readonly layout = new StorageLayout('');

  constructor(readonly driver: StorageDriver) {}

  /** Where the store is, for messages: a directory or s3://bucket/prefix. */
  get location(): string {
    return this.driver.location;
  }

  /**
   * A local directory on the store's own filesystem where an input archive can be extracted so that
   * its verified files are renamed into place (commitVerifiedFile) instead of copied; undefined for
   * stores that are not a local directory (S3), whose inputs are extracted elsewhere and streamed in.
   */
  get extractionDir(): string | undefined {
    return this.driver instanceof FilesystemDriver ? join(this.driver.root, '_tmp', '_seed') : undefined;
  }

  /** The stored blob's size, or undefined when the store does not have it. */
  async blobSize(digest: Digest): Promise<number | undefined> {
    return (await this.blobInfo(digest))?.size;
  }

  /** The stored blob's size and last write, or undefined when the store does not have it. */
  async blobInfo(digest: Digest): Promise<{ size: number; modifiedAt: Date } | undefined> {
    try {
      const { size, modifiedAt } = await this.driver.stat(this.layout.blobKey(digest));
      return { size, modifiedAt };
    } catch (err) {
      if (isStorageNotFound(err)) return undefined;
      throw err;
    }
  }

  /**
   * Streams a blob in; it becomes visible only once digest and size checked out (else the driver's
   * DIGEST_INVALID / SIZE_INVALID, and nothing is visible). Resolves with the bytes written.
   */
  async writeBlob(digest: Digest, source: Readable, size?: number): Promise<number> {
    const writer = await this.driver.blobWriter(this.layout.blobKey(digest), digest.algorithm);
    try {
      for await (const chunk of source) await writer.write(chunk as Buffer);
      await writer.commit(digest, size);
      return writer.size;
    } catch (err) {
      await writer.cancel();
      source.destroy();
      throw err;
    }
  }

  /**
   * Moves a local file whose content was verified against `digest` (and fsynced) into place: only
   * for files under extractionDir, on the same filesystem as the store, where rename(2) is atomic.
   */
  async commitVerifiedFile(path: string, digest: Digest): Promise<void> {
    if (!(this.driver instanceof FilesystemDriver)) throw new Error(`cannot move ${path} into ${this.location}: not a directory store`);
    await commitFile(path, this.driver.path(this.layout.blobKey(digest)));
  }

  /** Lets repository `name` serve blob `digest` (an empty link key; writing it twice is harmless). */
  async linkBlob(name: string, digest: Digest): Promise<void> {
    await this.driver.putContent(this.layout.layerLinkKey(name, digest), '');
  }

  /**
   * Stores a manifest of `name` whose body was verified against `digest`, as the registry stores a
   * cache fill: the body as a blob (if the store lacks it), its revision (holding the media type),
   * and its referrer entry when it has a subject.
   */
  async putManifest(name: string, digest: Digest, body: Buffer, mediaType: string): Promise<void> {
    const manifest = parseManifest(body, mediaType);
    if ((await this.blobSize(digest)) === undefined) {
      const writer = await this.driver.blobWriter(this.layout.blobKey(digest), digest.algorithm);
      try {
        await writer.write(body);
        await writer.commit(digest, body.length);
      } catch (err) {
        await writer.cancel();
        throw err;
      }
    }
    await this.driver.putContent(this.layout.manifestRevisionKey(name, digest), manifest.mediaType);
    if (manifest.subject) {
      const descriptor: Descriptor = { mediaType: manifest.mediaType, digest: digest.value, size: body.length };
      if (manifest.artifactType) descriptor.artifactType = manifest.artifactType;
      if (manifest.annotations) descriptor.annotations = manifest.annotations;
      await this.driver.putContent(this.layout.referrerKey(name, descriptorDigest(manifest.subject), digest), JSON.stringify(descriptor));
    }
  }

  /** The digest tag `name:tag` points at, or undefined. */
  async readTag(name: string, tag: string): Promise<Digest | undefined> {
    try {
      return tryParseDigest((await this.driver.getContent(this.layout.tagKey(name, tag))).toString('utf8').trim());
    } catch (err) {
      if (isStorageNotFound(err)) return undefined;
      throw err;
    }
  }

  /** Points `name:tag` at `digest` (the tag record the registry reads: the digest's text). */
  async putTag(name: string, tag: string, digest: Digest): Promise<void> {
    await this.driver.putContent(this.layout.tagKey(name, tag), digest.value);
  }

  /** Aborts blob writes of interrupted runs that started more than `olderThanMs` ago (temp files, multipart uploads). */
  async abortStaleWrites(olderThanMs: number): Promise<number> {
    const before = Date.now() - olderThanMs;
    let aborted = 0;
    for await (const write of this.driver.listIncompleteWrites()) {
      if (write.startedAt.getTime() >= before) continue;
      await this.driver.abortIncompleteWrite(write);
      aborted++;
    }
    return aborted;
  }

  // --- reading, for `stevedore export` ---

  /** Every key of the hosted repositories (tags, revisions, links, referrers), in key order. */
  async repositoryKeys(): Promise<Array<{ key: string; modifiedAt: Date }>> {
    const keys: Array<{ key: string; modifiedAt: Date }> = [];
    for await (const info of this.driver.walk(this.layout.repositoriesPrefix)) keys.push({ key: info.key, modifiedAt: info.modifiedAt });
    return keys.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  /** The whole content of a small key (a tag, revision, link or referrer). */
  getContent(key: string): Promise<Buffer> {
    return this.driver.getContent(key);
  }

  /** A stream of a stored blob's bytes. */
  openBlob(digest: Digest): Promise<Readable> {
    return this.driver.reader(this.layout.blobKey(digest));
  }
}
