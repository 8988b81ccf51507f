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
 * export need. StoreWriter, the importer and the export's tar writer work on this interface, so only
 * its implementation changes when the hosted stores of lib/storage take over (writeBlob →
 * BlobStore, putManifest/putTag → ManifestStore.putCached, ...).
 */
export interface StoreTarget {
  /** The hosted store's keys (no namespace): mirror and seed fill it, export reads `repositories/`. */
  readonly layout: StorageLayout;
  /** Where the store is, for messages: a directory or s3://bucket/prefix/. */
  readonly location: string;
  /**
   * A local directory on the store's own filesystem where an input archive can be extracted so that
   * its verified files are renamed into place (commitVerifiedFile) instead of copied; undefined for
   * stores that are not a local directory (S3), whose inputs are extracted elsewhere and streamed in.
   */
  readonly extractionDir: string | undefined;

  /** The stored blob's size, or undefined when the store does not have it. */
  blobSize(digest: Digest): Promise<number | undefined>;
  /** The stored blob's size and last write, or undefined when the store does not have it. */
  blobInfo(digest: Digest): Promise<{ size: number; modifiedAt: Date } | undefined>;
  /**
   * Streams a blob in; it becomes visible only once digest and size checked out (else
   * DIGEST_INVALID / SIZE_INVALID, and nothing is visible). Resolves with the bytes written.
   */
  writeBlob(digest: Digest, source: Readable, size?: number): Promise<number>;
  /** Moves a verified, fsynced local file under extractionDir into place as blob `digest`. */
  commitVerifiedFile(path: string, digest: Digest): Promise<void>;
  /** Lets repository `name` serve blob `digest` (idempotent). */
  linkBlob(name: string, digest: Digest): Promise<void>;
  /**
   * Stores a manifest of `name` whose body was verified against `digest`, as the registry stores a
   * cache fill: the body as a blob, its revision (holding the media type), its referrer entry when
   * it has a subject. Not its tags (putTag, once everything is stored).
   */
  putManifest(name: string, digest: Digest, body: Buffer, mediaType: string): Promise<void>;
  /** The digest tag `name:tag` points at, or undefined. */
  readTag(name: string, tag: string): Promise<Digest | undefined>;
  /** Points `name:tag` at `digest`. */
  putTag(name: string, tag: string, digest: Digest): Promise<void>;
  /** Aborts blob writes of interrupted runs started more than `olderThanMs` ago; how many. */
  abortStaleWrites(olderThanMs: number): Promise<number>;

  /** Every key of the hosted repositories (tags, revisions, links, referrers), in key order. */
  repositoryKeys(): Promise<Array<{ key: string; modifiedAt: Date }>>;
  /** The whole content of a small key (a tag, revision, link or referrer). */
  getContent(key: string): Promise<Buffer>;
  /** A stream of a stored blob's bytes. */
  openBlob(digest: Digest): Promise<Readable>;
}

/** StoreTarget on a storage driver (a directory or S3) and the layout's keys. */
export class DriverStoreTarget implements StoreTarget {
  readonly layout = new StorageLayout('');

  constructor(readonly driver: StorageDriver) {}

  get location(): string {
    return this.driver.location;
  }

  // Inside a directory store, apart from the temp dirs a restarting worker sweeps.
  get extractionDir(): string | undefined {
    return this.driver instanceof FilesystemDriver ? join(this.driver.root, '_tmp', '_seed') : undefined;
  }

  async blobSize(digest: Digest): Promise<number | undefined> {
    return (await this.blobInfo(digest))?.size;
  }

  async blobInfo(digest: Digest): Promise<{ size: number; modifiedAt: Date } | undefined> {
    try {
      const { size, modifiedAt } = await this.driver.stat(this.layout.blobKey(digest));
      return { size, modifiedAt };
    } catch (err) {
      if (isStorageNotFound(err)) return undefined;
      throw err;
    }
  }

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

  async repositoryKeys(): Promise<Array<{ key: string; modifiedAt: Date }>> {
    const keys: Array<{ key: string; modifiedAt: Date }> = [];
    for await (const info of this.driver.walk(this.layout.repositoriesPrefix)) keys.push({ key: info.key, modifiedAt: info.modifiedAt });
    return keys.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  getContent(key: string): Promise<Buffer> {
    return this.driver.getContent(key);
  }

  openBlob(digest: Digest): Promise<Readable> {
    return this.driver.reader(this.layout.blobKey(digest));
  }
}
