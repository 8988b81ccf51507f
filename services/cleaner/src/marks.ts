import { readFile } from 'node:fs/promises';
import { parseManifest, descriptorDigest } from '../../../lib/oci/manifest.js';
import { listLinkedDigests, listRepositoryNames } from '../../../lib/storage/inventory.js';
import type { StorageLayout } from '../../../lib/storage/layout.js';
import { join } from 'node:path';

/**
 * Mark phase of garbage collection: every manifest revision of every hosted repository, and every
 * blob and manifest those manifests reference. (A deleted manifest has no revision, so its
 * exclusive layers are not marked.)
 */
export async function markHostedReferences(layout: StorageLayout): Promise<Set<string>> {
  const marked = new Set<string>();
  for (const name of await listRepositoryNames(layout)) {
    for (const revision of await listLinkedDigests(join(layout.manifestsDir(name), 'revisions'))) {
      marked.add(revision.value);
      const mediaType = await readFile(layout.manifestRevisionPath(name, revision), 'utf8').catch(() => undefined);
      const body = await readFile(layout.blobPath(revision)).catch(() => undefined);
      if (!body) continue;
      try {
        const manifest = parseManifest(body, mediaType?.trim());
        for (const d of [...manifest.blobs, ...manifest.manifests]) marked.add(descriptorDigest(d).value);
        if (manifest.subject) marked.add(descriptorDigest(manifest.subject).value);
      } catch {
        // An unparsable stored manifest references nothing we can see; keep its own blob only.
      }
    }
  }
  return marked;
}
