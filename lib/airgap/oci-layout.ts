import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { isValidName, isValidTag } from '../oci/reference.js';
import { fileInside } from './archive.js';
import { parseImageReference, storedRepository } from './image-list.js';
import type { SeedImage, SeedSource } from './importer.js';
import { AirgapError } from './store-writer.js';

/** Manifests and configs read into memory are capped at this size. */
export const MAX_DOCUMENT = 16 * 1024 * 1024;

export async function readDocument(path: string, what: string): Promise<Buffer> {
  const info = await stat(path);
  if (info.size > MAX_DOCUMENT) throw new AirgapError(`${what} (${path}) is ${info.size} bytes: larger than any manifest or config should be`);
  return readFile(path);
}

/**
 * A source whose manifests and blobs are files found by digest alone, whatever the repository
 * (an OCI layout, a Stevedore export); `blobPath` is undefined for a digest the input lacks.
 */
export function contentAddressedSource(source: Omit<SeedSource, 'readManifest' | 'blobFile'>, blobPath: (digest: Digest) => Promise<string | undefined>): SeedSource {
  return {
    ...source,
    async readManifest(_name: string, digest: Digest) {
      const path = await blobPath(digest);
      return path === undefined ? undefined : readDocument(path, `manifest ${digest.value}`);
    },
    blobFile: (_name: string, digest: Digest) => blobPath(digest),
  };
}

export interface NamingOptions {
  /** Repository for entries named by a tag only (or not at all). */
  name: string | undefined;
  keepRegistry: boolean;
}

const CONTAINERD_NAME = 'io.containerd.image.name';
const REF_NAME = 'org.opencontainers.image.ref.name';

/**
 * Where an image named `value` goes: a full reference (`docker.io/rancher/pause:3.6`, `team/app:v1`,
 * normalised like docker does) or, with --name, a bare tag. Returns undefined for a bare tag without --name.
 */
export function nameImage(value: string, options: NamingOptions): { name: string; tag: string | undefined } | undefined {
  if (!value.includes('/') && !value.includes(':') && !value.includes('@')) {
    if (!isValidTag(value)) throw new AirgapError(`"${value}" is neither a tag nor an image reference`);
    if (options.name === undefined) return undefined;
    return { name: options.name, tag: value };
  }
  let ref;
  try {
    ref = parseImageReference(value);
  } catch (err) {
    throw new AirgapError((err as Error).message);
  }
  return { name: storedRepository(ref, options.keepRegistry), tag: ref.tag };
}

export function checkRepositoryName(name: string): string {
  if (!isValidName(name)) throw new AirgapError(`--name "${name}" is not a valid repository name`);
  return name;
}

/** An OCI image layout (index.json, blobs/<alg>/<hex>): each index.json entry is an image, named by its annotations. */
export async function openOciLayout(dir: string, movable: boolean, options: NamingOptions): Promise<SeedSource> {
  const indexPath = join(dir, 'index.json');
  let index: { manifests?: unknown };
  try {
    index = JSON.parse((await readDocument(indexPath, 'index.json')).toString('utf8')) as { manifests?: unknown };
  } catch (err) {
    throw new AirgapError(`${indexPath} is not a valid OCI index: ${(err as Error).message}`);
  }
  if (!Array.isArray(index.manifests)) throw new AirgapError(`${indexPath} has no "manifests" array`);
  const byKey = new Map<string, SeedImage>();
  const problems: SeedSource['problems'] = [];
  index.manifests.forEach((entry: unknown, i: number) => {
    const d = (entry ?? {}) as { digest?: unknown; mediaType?: unknown; annotations?: Record<string, unknown> };
    const label = `index.json entry ${i}`;
    const digest = typeof d.digest === 'string' ? tryParseDigest(d.digest) : undefined;
    if (!digest) {
      problems.push({ label, reason: 'no valid digest' });
      return;
    }
    const annotated = d.annotations?.[CONTAINERD_NAME] ?? d.annotations?.[REF_NAME];
    let target: { name: string; tag: string | undefined } | undefined;
    try {
      if (typeof annotated === 'string' && annotated !== '') {
        target = nameImage(annotated, options);
        if (!target) {
          problems.push({ label: `${label} ("${annotated}")`, reason: `its ${REF_NAME} is a tag only; give --name REPO to store it as REPO:${annotated}` });
          return;
        }
      } else if (options.name !== undefined) {
        target = { name: options.name, tag: undefined };
      } else {
        problems.push({ label: `${label} (${digest.value})`, reason: `it has no ${REF_NAME} annotation; give --name REPO to store it (by digest only)` });
        return;
      }
    } catch (err) {
      problems.push({ label, reason: (err as Error).message });
      return;
    }
    const key = `${target.name}\0${digest.value}`;
    const image = byKey.get(key) ?? {
      label: typeof annotated === 'string' ? annotated : `${target.name}@${digest.value}`,
      sourceName: '', name: target.name, tags: [], digest,
      mediaType: typeof d.mediaType === 'string' ? d.mediaType : undefined,
    };
    if (target.tag !== undefined) image.tags.push(target.tag);
    byKey.set(key, image);
  });

  return contentAddressedSource({ kind: 'OCI image layout', images: [...byKey.values()], problems, movable },
    (digest) => fileInside(dir, join('blobs', digest.algorithm, digest.hex)));
}
