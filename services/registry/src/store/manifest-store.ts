import { readdir, stat, unlink, utimes } from 'node:fs/promises';
import { digestOf, tryParseDigest, type Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { MediaType } from '../../../../lib/oci/media-types.js';
import { descriptorDigest, parseManifest, type Descriptor, type ParsedManifest } from '../../../../lib/oci/manifest.js';
import type { Reference } from '../../../../lib/oci/reference.js';
import { writeFileAtomic } from '../../../../lib/storage/atomic.js';
import type { StorageLayout } from '../../../../lib/storage/layout.js';
import type { BlobStore } from './blob-store.js';
import { isNotFound, ManifestReader, readIfExists } from '../../../../lib/storage/manifest-reader.js';

export type { StoredManifest } from '../../../../lib/storage/manifest-reader.js';

/** The manifests of one store: ManifestReader's reads plus pushes, cache fills and deletes. */
export class ManifestStore extends ManifestReader {
  constructor(layout: StorageLayout, private readonly blobs: BlobStore) {
    super(layout);
  }

  /**
   * Stores a pushed manifest after checking it: valid JSON of a known type, the digest it was
   * pushed by (if any) matches, and everything it references is present in the repository.
   */
  async put(name: string, reference: Reference, body: Buffer, contentType: string | undefined, extraTags: string[]): Promise<{ digest: Digest; manifest: ParsedManifest }> {
    const manifest = parseManifest(body, contentType, { strict: true });
    const digest = digestOf(body, reference.kind === 'digest' ? reference.digest.algorithm : 'sha256');
    if (reference.kind === 'digest' && reference.digest.value !== digest.value) {
      throw new RegistryError('DIGEST_INVALID', { expected: reference.digest.value, actual: digest.value }, {
        message: 'manifest digest does not match the digest it was pushed by',
      });
    }
    await this.checkReferences(name, manifest);
    const tags = reference.kind === 'tag' ? [reference.tag, ...extraTags] : extraTags;
    await this.store(name, digest, body, manifest, tags);
    return { digest, manifest };
  }

  /**
   * Stores a manifest fetched from an upstream (digest already verified by the caller). Unlike a
   * push, the blobs it references need not be here yet: a cache fetches them on demand.
   */
  async putCached(name: string, digest: Digest, body: Buffer, contentType: string | undefined, tag?: string): Promise<ParsedManifest> {
    const manifest = parseManifest(body, contentType);
    await this.store(name, digest, body, manifest, tag === undefined ? [] : [tag]);
    return manifest;
  }

  private async store(name: string, digest: Digest, body: Buffer, manifest: ParsedManifest, tags: string[]): Promise<void> {
    if (!(await this.blobs.stat(digest))) await writeFileAtomic(this.layout.tmpDir, this.layout.blobPath(digest), body);
    await writeFileAtomic(this.layout.tmpDir, this.layout.manifestRevisionPath(name, digest), manifest.mediaType);
    this.revisions.set(`${name}\0${digest.value}`, this.stamp(manifest.mediaType));
    this.rememberBody(digest, body);

    if (manifest.subject) {
      const subject = descriptorDigest(manifest.subject);
      const descriptor: Descriptor = { mediaType: manifest.mediaType, digest: digest.value, size: body.length };
      if (manifest.artifactType) descriptor.artifactType = manifest.artifactType;
      if (manifest.annotations) descriptor.annotations = manifest.annotations;
      await writeFileAtomic(this.layout.tmpDir, this.layout.referrerPath(name, subject, digest), JSON.stringify(descriptor));
    }
    for (const tag of new Set(tags)) {
      await writeFileAtomic(this.layout.tmpDir, this.layout.tagPath(name, tag), digest.value);
      this.tags.set(`${name}\0${tag}`, this.stamp({ digest, validatedAt: Date.now() }));
    }
  }

  /** Records that the upstream confirmed the tag still points at `digest` (the tag file's mtime, which readTag() reports). */
  async markTagValidated(name: string, tag: string, digest: Digest): Promise<void> {
    const now = new Date();
    await utimes(this.layout.tagPath(name, tag), now, now).catch(() => {});
    this.tags.set(`${name}\0${tag}`, this.stamp({ digest, validatedAt: now.getTime() }));
  }

  /**
   * Everything a pushed manifest references must be in the repository, with the size its descriptor
   * says: a wrong size would make every client's pull of it fail.
   */
  private async checkReferences(name: string, manifest: ParsedManifest): Promise<void> {
    const missing: string[] = [];
    const mismatches: string[] = [];
    const check = async (d: Descriptor, field: string, present: boolean, what: string) => {
      if (!present) return void missing.push(d.digest);
      const stored = await this.blobs.stat(descriptorDigest(d));
      if (stored && stored.size !== d.size) mismatches.push(`${field}.size ${d.size} does not match the stored ${what}'s size ${stored.size}`);
    };
    await Promise.all([
      ...manifest.blobs.map(async (d, i) => check(d, manifest.blobFields[i]!, await this.blobs.isLinked(name, descriptorDigest(d)), 'blob')),
      ...manifest.manifests.map(async (d, i) => check(d, manifest.manifestFields[i]!, Boolean(await this.revisionMediaType(name, descriptorDigest(d))), 'manifest')),
    ]);
    if (missing.length > 0) {
      throw new RegistryError('MANIFEST_BLOB_UNKNOWN', { missing: missing.slice(0, 20) }, {
        message: `manifest references ${missing.length} blob(s) or manifest(s) not in repository ${name}`,
      });
    }
    if (mismatches.length > 0) {
      mismatches.sort();
      throw new RegistryError('MANIFEST_INVALID', { mismatches: mismatches.slice(0, 20) }, { message: `manifest invalid: ${mismatches[0]}` });
    }
  }

  /** Deletes a tag (the manifest stays), or a manifest by digest with every tag pointing at it. */
  async delete(name: string, reference: Reference): Promise<void> {
    if (reference.kind === 'tag') {
      this.tags.delete(`${name}\0${reference.tag}`);
      try {
        await unlink(this.layout.tagPath(name, reference.tag));
      } catch (err) {
        if (isNotFound(err)) throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: reference.tag });
        throw err;
      }
      return;
    }
    const stored = await this.get(name, reference);
    const digest = stored.digest;
    try {
      const parsed = parseManifest(stored.body, stored.mediaType);
      if (parsed.subject) await unlink(this.layout.referrerPath(name, descriptorDigest(parsed.subject), digest)).catch(() => {});
    } catch {
      // A stored manifest that no longer parses has no referrer entry worth cleaning.
    }
    this.revisions.delete(`${name}\0${digest.value}`);
    await unlink(this.layout.manifestRevisionPath(name, digest)).catch((err) => {
      if (!isNotFound(err)) throw err;
    });
    for (const tag of await this.listTags(name).catch(() => [] as string[])) {
      const tagged = await this.resolveTag(name, tag);
      if (tagged?.value === digest.value) {
        this.tags.delete(`${name}\0${tag}`);
        await unlink(this.layout.tagPath(name, tag)).catch(() => {});
      }
    }
  }

  /** All tags of a repository in lexical order; NAME_UNKNOWN when the repository has none and never had manifests. */
  async listTags(name: string): Promise<string[]> {
    try {
      return (await readdir(this.layout.tagsDir(name))).filter((t) => !t.startsWith('.')).sort();
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const exists = await stat(this.layout.repositoryDir(name)).then(() => true, () => false);
    if (!exists) throw new RegistryError('NAME_UNKNOWN', { name }, { message: `repository ${name} is not known to this registry` });
    return [];
  }

  /** The referrers index of `subject` in repository `name`, optionally filtered by artifactType. */
  async referrers(name: string, subject: Digest, artifactType?: string): Promise<{ schemaVersion: 2; mediaType: string; manifests: Descriptor[] }> {
    let files: string[] = [];
    try {
      files = await readdir(this.layout.referrersDir(name, subject));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    const manifests: Descriptor[] = [];
    for (const file of files.sort()) {
      const raw = await readIfExists(`${this.layout.referrersDir(name, subject)}/${file}`);
      if (raw === undefined) continue;
      const descriptor = JSON.parse(raw) as Descriptor;
      // The referrer must still be a manifest of the repository (it may have been deleted).
      const referrer = tryParseDigest(descriptor.digest);
      if (!referrer || !(await this.revisionMediaType(name, referrer))) continue;
      if (artifactType === undefined || descriptor.artifactType === artifactType) manifests.push(descriptor);
    }
    return { schemaVersion: 2, mediaType: MediaType.OciIndex, manifests };
  }
}
