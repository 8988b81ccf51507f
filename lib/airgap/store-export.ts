import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import * as tar from 'tar';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { isValidName, isValidTag } from '../oci/reference.js';
import { StorageLayout } from '../storage/layout.js';
import { entriesOf, fileInside } from './archive.js';
import type { SeedImage, SeedSource } from './importer.js';
import { contentAddressedSource } from './oci-layout.js';
import type { StoreTarget } from './store-target.js';
import { AirgapError } from './store-writer.js';
import { writeZstd } from './zstd.js';

/**
 * The export archive: the hosted store's own layout in a tar (optionally gzip or zstd), i.e.
 * `repositories/...` (tags, manifest revisions, blob links) and the blobs those reference under
 * `blobs/<alg>/<2 hex>/<hex>`. Pull-through cache content, uploads and temp files stay out.
 * Seeding from it (or from the directory it was extracted to) verifies every blob again.
 * The store is read through its driver (a directory or S3); the archive is a local file.
 */

export interface ExportSummary {
  repositories: number;
  tags: number;
  blobs: number;
  bytes: number;
  missing: string[];
}

/** A repository key's parts: `repositories/<name>/_manifests/revisions/<alg>/<hex>`, `.../_layers/<alg>/<hex>`, `.../_manifests/tags/<tag>`. */
const REPOSITORY_KEY = /^repositories\/(.+?)\/_(.*)$/;
const LINKED_DIGEST = /^(?:manifests\/revisions|layers)\/([^/]+)\/([^/]+)$/;
const TAG = /^manifests\/tags\/[^/.][^/]*$/;

interface TarEntry {
  path: string;
  size: number;
  modifiedAt: Date;
  /** The entry's bytes: exactly `size` of them (a small key's content, or a blob streamed from the store). */
  body(): Promise<Iterable<Buffer> | AsyncIterable<Buffer>>;
}

const BLOCK = 512;
/** Small keys read at once (S3 requests in flight). */
const SMALL_READS = 16;

/** `task` over `items`, at most `limit` at a time; results in input order. */
async function mapLimited<T, R>(items: readonly T[], limit: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await task(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/** A tar header for a regular file (pax extension for paths longer than ustar holds), owner-neutral like `tar --portable`. */
function tarHeader(entry: TarEntry): Buffer {
  const fields = { path: entry.path, mode: 0o644, size: entry.size, mtime: entry.modifiedAt, type: 'File' as const };
  const header = new tar.Header(fields);
  const needPax = header.encode();
  return needPax ? Buffer.concat([new tar.Pax(fields).encode(), header.block!]) : header.block!;
}

/** The tar stream of `entries`, pulled one entry at a time (a blob is streamed from the store, never buffered). */
async function* tarStream(entries: TarEntry[]): AsyncIterable<Buffer> {
  for (const entry of entries) {
    yield tarHeader(entry);
    let written = 0;
    for await (const chunk of await entry.body()) {
      written += chunk.length;
      if (written > entry.size) break;
      yield chunk;
    }
    // A key that changed size under us (deleted or rewritten meanwhile) would corrupt every entry after it.
    if (written !== entry.size) throw new AirgapError(`${entry.path} changed while it was exported (${written} bytes read, ${entry.size} expected): run the export again`);
    const pad = (BLOCK - (entry.size % BLOCK)) % BLOCK;
    if (pad > 0) yield Buffer.alloc(pad);
  }
  yield Buffer.alloc(2 * BLOCK);
}

export async function exportStore(target: StoreTarget, out: string): Promise<ExportSummary> {
  const keys = await target.repositoryKeys();
  const names = new Set<string>();
  const blobs = new Map<string, Digest>();
  let tags = 0;
  for (const { key } of keys) {
    const match = REPOSITORY_KEY.exec(key);
    if (!match) continue;
    names.add(match[1]!);
    const linked = LINKED_DIGEST.exec(match[2]!);
    const digest = linked ? tryParseDigest(`${linked[1]}:${linked[2]}`) : undefined;
    if (digest) blobs.set(digest.value, digest);
    if (TAG.test(match[2]!)) tags++;
  }
  if (names.size === 0) throw new AirgapError(`the store ${target.location} has no repositories to export`);

  // Small keys are read whole (a few at a time) before the archive starts, so each header gives the content's size.
  const entries: TarEntry[] = [];
  const contents = await mapLimited(keys, SMALL_READS, ({ key }) => target.getContent(key));
  keys.forEach(({ key, modifiedAt }, i) => {
    const content = contents[i]!;
    entries.push({ path: key, size: content.length, modifiedAt, body: async () => [content] });
  });

  const missing: string[] = [];
  let bytes = 0;
  let blobCount = 0;
  for (const digest of [...blobs.values()].sort((a, b) => a.value.localeCompare(b.value))) {
    const info = await target.blobInfo(digest);
    if (!info) {
      missing.push(digest.value);
      continue;
    }
    bytes += info.size;
    blobCount++;
    entries.push({ path: target.layout.blobKey(digest), size: info.size, modifiedAt: info.modifiedAt, body: () => target.openBlob(digest) as Promise<AsyncIterable<Buffer>> });
  }

  const gzip = /\.(?:gz|tgz)$/i.test(out);
  const zstd = /\.(?:zst|tzst)$/i.test(out);
  const temp = join(dirname(out), `.${basename(out)}.partial-${randomUUID()}`);
  try {
    const source = Readable.from(tarStream(entries));
    if (zstd) await writeZstd(source, temp);
    else if (gzip) await pipeline(source, createGzip(), createWriteStream(temp));
    else await pipeline(source, createWriteStream(temp));
    await rename(temp, out);
  } catch (err) {
    await rm(temp, { force: true });
    throw new AirgapError(`cannot write ${out}: ${(err as Error).message}`);
  }
  return { repositories: names.size, tags, blobs: blobCount, bytes, missing };
}

/** Digests named by the files of `<dir>/<alg>/<hex>` of an extracted export (a local directory). */
async function listLinkedDigests(dir: string): Promise<Digest[]> {
  const entries = (path: string) => readdir(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return [] as string[];
    throw err;
  });
  const digests: Digest[] = [];
  for (const algorithm of await entries(dir)) {
    for (const hex of await entries(join(dir, algorithm))) {
      const digest = tryParseDigest(`${algorithm}:${hex}`);
      if (digest) digests.push(digest);
    }
  }
  return digests;
}

async function revisionsAndLinks(layout: StorageLayout, name: string): Promise<{ revisions: Digest[]; links: Digest[] }> {
  return {
    revisions: await listLinkedDigests(join(layout.manifestsDir(name), 'revisions')),
    links: await listLinkedDigests(dirname(layout.layerLinksDir(name, 'sha256'))),
  };
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
