import { randomUUID } from 'node:crypto';
import { readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import * as tar from 'tar';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { isValidName, isValidTag } from '../oci/reference.js';
import { listLinkedDigests, listRepositoryNames } from '../storage/inventory.js';
import { StorageLayout } from '../storage/layout.js';
import { entriesOf, fileInside } from './archive.js';
import type { SeedImage, SeedSource } from './importer.js';
import { contentAddressedSource } from './oci-layout.js';
import { AirgapError } from './store-writer.js';
import { writeZstd } from './zstd.js';
import type { Readable } from 'node:stream';

/**
 * The export archive: the hosted store's own layout in a tar (optionally gzip), i.e.
 * `repositories/...` (tags, manifest revisions, blob links) and the blobs those reference under
 * `blobs/<alg>/<2 hex>/<hex>`. Pull-through cache content, uploads and temp files stay out.
 * Seeding from it (or from the directory it was extracted to) verifies every blob again.
 */

export interface ExportSummary {
  repositories: number;
  tags: number;
  blobs: number;
  bytes: number;
  missing: string[];
}

async function revisionsAndLinks(layout: StorageLayout, name: string): Promise<{ revisions: Digest[]; links: Digest[] }> {
  return {
    revisions: await listLinkedDigests(join(layout.manifestsDir(name), 'revisions')),
    links: await listLinkedDigests(dirname(layout.layerLinksDir(name, 'sha256'))),
  };
}

export async function exportStore(root: string, out: string): Promise<ExportSummary> {
  const layout = new StorageLayout(root);
  const names = await listRepositoryNames(layout);
  if (names.length === 0) throw new AirgapError(`the store ${root} has no repositories to export`);
  const blobs = new Map<string, Digest>();
  let tags = 0;
  for (const name of names) {
    const { revisions, links } = await revisionsAndLinks(layout, name);
    for (const digest of [...revisions, ...links]) blobs.set(digest.value, digest);
    tags += (await entriesOf(layout.tagsDir(name))).filter((t) => !t.startsWith('.')).length;
  }
  const files: string[] = [];
  const missing: string[] = [];
  let bytes = 0;
  for (const digest of [...blobs.values()].sort((a, b) => a.value.localeCompare(b.value))) {
    const path = layout.blobPath(digest);
    const info = await stat(path).catch(() => undefined);
    if (!info?.isFile()) {
      missing.push(digest.value);
      continue;
    }
    bytes += info.size;
    files.push(relative(root, path));
  }
  const gzip = /\.(?:gz|tgz)$/i.test(out);
  const zstd = /\.(?:zst|tzst)$/i.test(out);
  const temp = join(dirname(out), `.${basename(out)}.partial-${randomUUID()}`);
  try {
    if (zstd) await writeZstd(tar.c({ cwd: root, portable: true, strict: true }, ['repositories', ...files]) as unknown as Readable, temp);
    else await tar.c({ file: temp, cwd: root, gzip, portable: true, strict: true }, ['repositories', ...files]);
    await rename(temp, out);
  } catch (err) {
    await rm(temp, { force: true });
    throw new AirgapError(`cannot write ${out}: ${(err as Error).message}`);
  }
  return { repositories: names.length, tags, blobs: files.length, bytes, missing };
}

/** Repository names of an input's repositories/ tree; symlinked directories are not followed. */
async function inputRepositoryNames(layout: StorageLayout): Promise<string[]> {
  const names: string[] = [];
  const walk = async (dir: string, prefix: string, depth: number): Promise<void> => {
    const children = await readdir(dir, { withFileTypes: true }).catch(() => []);
    if (prefix && children.some((c) => c.isDirectory() && (c.name === '_manifests' || c.name === '_layers'))) names.push(prefix);
    if (depth > 32) return;
    for (const child of children) {
      if (!child.isDirectory() || child.name.startsWith('_') || child.name.startsWith('.')) continue;
      await walk(join(dir, child.name), prefix ? `${prefix}/${child.name}` : child.name, depth + 1);
    }
  };
  await walk(layout.repositoriesDir, '', 0);
  return names.sort();
}

/** A small text file of the input (a tag or revision link), read only if it lies inside it. */
async function readLink(dir: string, path: string): Promise<string> {
  const inside = await fileInside(dir, relative(dir, path)).catch(() => undefined);
  if (!inside || (await stat(inside)).size > 1024) return '';
  return (await readFile(inside, 'utf8')).trim();
}

/** A store (an extracted export archive, or a store directory) as a seed input: every manifest revision, with its tags. */
export async function openStoreExport(dir: string, movable: boolean): Promise<SeedSource> {
  const layout = new StorageLayout(dir);
  const names = await inputRepositoryNames(layout);
  if (names.length === 0) throw new AirgapError(`${dir} has a repositories/ directory without any repository in it`);
  const images: SeedImage[] = [];
  const problems: SeedSource['problems'] = [];
  for (const name of names) {
    if (!isValidName(name)) {
      problems.push({ label: name, reason: 'not a valid repository name; skipped' });
      continue;
    }
    const { revisions } = await revisionsAndLinks(layout, name);
    const tags = new Map<string, string[]>();
    for (const tag of await entriesOf(layout.tagsDir(name))) {
      if (tag.startsWith('.')) continue;
      const digest = isValidTag(tag) ? tryParseDigest(await readLink(dir, layout.tagPath(name, tag))) : undefined;
      if (!digest) {
        problems.push({ label: `${name}:${tag}`, reason: 'the tag file does not hold a digest' });
        continue;
      }
      tags.set(digest.value, [...(tags.get(digest.value) ?? []), tag]);
    }
    for (const digest of revisions) {
      const mediaType = (await readLink(dir, layout.manifestRevisionPath(name, digest))) || undefined;
      const tagged = tags.get(digest.value) ?? [];
      tags.delete(digest.value);
      images.push({ label: `${name}@${digest.value}${tagged.length ? ` (${tagged.join(', ')})` : ''}`, sourceName: name, name, tags: tagged, digest, mediaType });
    }
    for (const [digest, tagged] of tags) problems.push({ label: `${name}:${tagged.join(', ')}`, reason: `the tag points at ${digest}, which is not a manifest of ${name}` });
  }
  images.sort((a, b) => Number(b.tags.length > 0) - Number(a.tags.length > 0));
  return contentAddressedSource({ kind: 'Stevedore export', images, problems, movable },
    (digest) => fileInside(dir, relative(dir, layout.blobPath(digest))));
}
