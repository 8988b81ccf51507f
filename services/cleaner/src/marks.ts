import { parseManifest, descriptorDigest } from '../../../lib/oci/manifest.js';
import { isStorageNotFound, type StorageDriver } from '../../../lib/storage/driver/driver.js';
import type { RepositoryScan } from '../../../lib/storage/inventory.js';
import { StorageLayout } from '../../../lib/storage/layout.js';

/** Manifests read at a time: each is a small GET (S3) or file read. */
const CONCURRENCY = 16;

const orMissing = (err: unknown) => (isStorageNotFound(err) ? undefined : Promise.reject(err));

/**
 * Mark phase of garbage collection: every manifest revision of every hosted repository, and every
 * blob and manifest those manifests reference. (A deleted manifest has no revision, so its
 * exclusive layers are not marked.) A store that fails to answer fails the mark, never shrinks it.
 */
export async function markHostedReferences(driver: StorageDriver, hosted: readonly RepositoryScan[]): Promise<Set<string>> {
  const layout = new StorageLayout('');
  const marked = new Set<string>();
  const revisions = hosted.flatMap((repository) => repository.revisions);
  for (const revision of revisions) marked.add(revision.digest.value);
  // One read per distinct manifest: the same manifest in several repositories references the same blobs.
  const distinct = [...new Map(revisions.map((r) => [r.digest.value, r])).values()];
  let next = 0;
  const worker = async () => {
    while (next < distinct.length) {
      const revision = distinct[next++]!;
      const [mediaType, body] = await Promise.all([
        driver.getContent(revision.key).then((b) => b.toString('utf8').trim(), orMissing),
        driver.getContent(layout.blobKey(revision.digest)).catch(orMissing),
      ]);
      if (!body) continue;
      try {
        const manifest = parseManifest(body, mediaType || undefined);
        for (const d of [...manifest.blobs, ...manifest.manifests]) marked.add(descriptorDigest(d).value);
        if (manifest.subject) marked.add(descriptorDigest(manifest.subject).value);
      } catch {
        // An unparsable stored manifest references nothing we can see; keep its own blob only.
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, distinct.length) }, worker));
  return marked;
}
