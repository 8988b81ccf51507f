import { digestOf, tryParseDigest, type Digest } from '../oci/digest.js';
import { RegistryError } from '../oci/errors.js';
import { MediaType } from '../oci/media-types.js';
import { descriptorDigest, parseManifest, type Descriptor, type ParsedManifest } from '../oci/manifest.js';
import type { Reference } from '../oci/reference.js';
import type { BlobStore } from './blob-store.js';
import { isStorageNotFound, listAll } from './driver/driver.js';
import { ManifestReader, readIfExists, type ReaderCaching } from './manifest-reader.js';

export type { StoredManifest } from './manifest-reader.js';

/** The manifests of one store: ManifestReader's reads plus pushes, cache fills and deletes. */
export class ManifestStore extends ManifestReader {
  constructor(private readonly blobs: BlobStore, caching?: ReaderCaching) {
    super(blobs.driver, blobs.layout, caching);
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
    // The body's digest was computed from these very bytes: a plain atomic write is a verified one.
    if (!(await this.blobs.stat(digest))) await this.driver.putContent(this.layout.blobKey(digest), body);
    await this.driver.putContent(this.layout.manifestRevisionKey(name, digest), manifest.mediaType);
    this.revisions.set(`${name}\0${digest.value}`, this.stamp(manifest.mediaType));
    this.rememberBody(digest, body);

    if (manifest.subject) {
      const subject = descriptorDigest(manifest.subject);
      const descriptor: Descriptor = { mediaType: manifest.mediaType, digest: digest.value, size: body.length };
      if (manifest.artifactType) descriptor.artifactType = manifest.artifactType;
      if (manifest.annotations) descriptor.annotations = manifest.annotations;
      await this.driver.putContent(this.layout.referrerKey(name, subject, digest), JSON.stringify(descriptor));
    }
    for (const tag of new Set(tags)) {
      await this.driver.putContent(this.layout.tagKey(name, tag), digest.value);
      this.tags.set(`${name}\0${tag}`, this.stamp({ digest, validatedAt: Date.now() }));
    }
  }

  /**
   * Records that the upstream confirmed the tag still points at `digest`: the tag key is rewritten
   * with the same content, so its modified time (which readTag() reports) is the validation time.
   * Conditional on the version just read, so a tag another writer moved meanwhile is left as it is.
   */
  async markTagValidated(name: string, tag: string, digest: Digest): Promise<void> {
    const key = this.layout.tagKey(name, tag);
    const current = await this.driver.getVersioned(key).catch((err) => (isStorageNotFound(err) ? undefined : Promise.reject(err)));
    if (current?.data.toString('utf8').trim() !== digest.value) return;
    const started = Date.now();
    if (await this.driver.replaceIfMatch(key, current.data, current.version) === undefined) return;
    this.tags.set(`${name}\0${tag}`, this.stamp({ digest, validatedAt: started }));
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
      const key = this.layout.tagKey(name, reference.tag);
      try {
        await this.driver.stat(key);
      } catch (err) {
        if (isStorageNotFound(err)) throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: reference.tag });
        throw err;
      }
      await this.driver.delete(key);
      return;
    }
    const stored = await this.get(name, reference);
    const digest = stored.digest;
    try {
      const parsed = parseManifest(stored.body, stored.mediaType);
      if (parsed.subject) await this.driver.delete(this.layout.referrerKey(name, descriptorDigest(parsed.subject), digest));
    } catch {
      // A stored manifest that no longer parses has no referrer entry worth cleaning.
    }
    this.revisions.delete(`${name}\0${digest.value}`);
    await this.driver.delete(this.layout.manifestRevisionKey(name, digest));
    for (const tag of await this.listTags(name).catch(() => [] as string[])) {
      const tagged = await this.resolveTag(name, tag);
      if (tagged?.value === digest.value) {
        this.tags.delete(`${name}\0${tag}`);
        await this.driver.delete(this.layout.tagKey(name, tag));
      }
    }
  }

  /** All tags of a repository in lexical order; NAME_UNKNOWN when the repository has none and never had manifests. */
  async listTags(name: string): Promise<string[]> {
    const prefix = this.layout.tagsPrefix(name);
    const tags = (await listAll(this.driver, prefix)).keys.map((info) => info.key.slice(prefix.length));
    if (tags.length > 0) return tags.filter((t) => !t.startsWith('.')).sort();
    const any = await this.driver.list(this.layout.repositoryPrefix(name), { delimiter: '/', limit: 1 });
    if (any.keys.length === 0 && any.prefixes.length === 0) {
      throw new RegistryError('NAME_UNKNOWN', { name }, { message: `repository ${name} is not known to this registry` });
    }
    return [];
  }

  /** The referrers index of `subject` in repository `name`, optionally filtered by artifactType. */
  async referrers(name: string, subject: Digest, artifactType?: string): Promise<{ schemaVersion: 2; mediaType: string; manifests: Descriptor[] }> {
    const keys: string[] = [];
    for await (const info of this.driver.walk(this.layout.referrersPrefix(name, subject))) keys.push(info.key);
    const manifests: Descriptor[] = [];
    for (const key of keys.sort()) {
      const raw = await readIfExists(this.driver, key);
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
