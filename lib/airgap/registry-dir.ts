import { readdir, readlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { digestOf, tryParseDigest, type Digest } from '../oci/digest.js';
import { isValidName, isValidTag } from '../oci/reference.js';
import { fileInside } from './archive.js';
import type { SeedImage, SeedSource } from './importer.js';
import { readDocument } from './oci-layout.js';
import { AirgapError } from './store-writer.js';

/**
 * A minimal registry directory, as simple mirroring scripts and static registries lay one out:
 *
 *   <repo>/manifests/sha256:<hex>     a manifest, named by its digest
 *   <repo>/manifests/<tag>            a symlink to sha256:<hex> (or a file holding the digest, or the manifest itself)
 *   <repo>/blobs/sha256:<hex>         blobs, per repository, or shared in blobs/sha256:<hex> or blobs/sha256/<hex>
 *
 * Repository names are the directory paths, taken as they are.
 */

const MAX_DEPTH = 16;

interface RepositoryEntry {
  dir: string;
  manifests: Map<string, { digest: Digest; path: string | undefined }>;
  tags: Map<string, string>;
}

async function subdirectories(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  } catch {
    return [];
  }
}

export async function openRegistryDir(root: string, movable: boolean): Promise<SeedSource> {
  const repositories = new Map<string, RepositoryEntry>();
  const problems: SeedSource['problems'] = [];

  const walk = async (relative: string, depth: number): Promise<void> => {
    const children = await subdirectories(join(root, relative));
    if (relative !== '' && children.includes('manifests')) {
      if (isValidName(relative)) repositories.set(relative, { dir: relative, manifests: new Map(), tags: new Map() });
      else problems.push({ label: relative, reason: 'not a valid repository name; skipped' });
    }
    if (depth >= MAX_DEPTH) return;
    for (const child of children) {
      if (child === 'manifests' || child === 'blobs' || child.startsWith('.') || child.startsWith('_')) continue;
      await walk(relative === '' ? child : `${relative}/${child}`, depth + 1);
    }
  };
  await walk('', 0);

  for (const [name, repo] of repositories) {
    const manifestsDir = join(repo.dir, 'manifests');
    for (const entry of (await readdir(join(root, manifestsDir))).sort()) {
      const relative = join(manifestsDir, entry);
      const label = `${name}/manifests/${entry}`;
      try {
        const asDigest = tryParseDigest(entry);
        if (asDigest) {
          repo.manifests.set(asDigest.value, { digest: asDigest, path: await fileInside(root, relative) });
          continue;
        }
        if (!isValidTag(entry)) {
          problems.push({ label, reason: 'neither a digest nor a valid tag; skipped' });
          continue;
        }
        const path = await fileInside(root, relative);
        if (!path) {
          problems.push({ label, reason: 'a tag that points at nothing (dangling link)' });
          continue;
        }
        // A tag is a link named after its manifest's digest, a file holding that digest, or a copy of the manifest.
        let digest = tryParseDigest(basename(await readlink(join(root, relative)).catch(() => '')));
        if (!digest) {
          const body = await readDocument(path, label);
          digest = tryParseDigest(body.toString('utf8').trim());
          if (!digest) {
            digest = digestOf(body);
            if (!repo.manifests.has(digest.value)) repo.manifests.set(digest.value, { digest, path });
          }
        }
        repo.tags.set(entry, digest.value);
        if (!repo.manifests.has(digest.value)) repo.manifests.set(digest.value, { digest, path: undefined });
      } catch (err) {
        if (!(err instanceof AirgapError)) throw err;
        problems.push({ label, reason: err.message });
      }
    }
  }
  if (repositories.size === 0) {
    throw new AirgapError(`${root} is not an OCI image layout (index.json), a docker-archive (manifest.json), a Stevedore store (repositories/, blobs/) or a registry directory (<repo>/manifests/)`);
  }

  const images: SeedImage[] = [];
  for (const [name, repo] of repositories) {
    for (const { digest } of repo.manifests.values()) {
      const tags = [...repo.tags].filter(([, d]) => d === digest.value).map(([t]) => t);
      images.push({ label: `${name}@${digest.value}${tags.length ? ` (${tags.join(', ')})` : ''}`, sourceName: name, name, tags, digest, mediaType: undefined });
    }
  }
  // Tagged images first: an index imported before its children stores them as well.
  images.sort((a, b) => Number(b.tags.length > 0) - Number(a.tags.length > 0));

  const blobPath = async (name: string, digest: Digest): Promise<string | undefined> => {
    for (const candidate of [
      join(name, 'blobs', digest.value), join('blobs', digest.value), join('blobs', digest.algorithm, digest.hex), join(name, 'blobs', digest.algorithm, digest.hex),
    ]) {
      const path = await fileInside(root, candidate);
      if (path) return path;
    }
    return undefined;
  };
  return {
    kind: 'registry directory',
    images,
    problems,
    movable,
    async readManifest(name: string, digest: Digest) {
      const repo = repositories.get(name);
      const path = repo?.manifests.get(digest.value)?.path ?? await fileInside(root, join(name, 'manifests', digest.value)) ?? await blobPath(name, digest);
      return path === undefined ? undefined : readDocument(path, `manifest ${digest.value} of ${name}`);
    },
    blobFile: blobPath,
  };
}
