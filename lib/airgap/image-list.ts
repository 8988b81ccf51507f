import { readFile } from 'node:fs/promises';
import { tryParseDigest, type Digest } from '../oci/digest.js';
import { isValidName, isValidTag, MAX_NAME_LENGTH } from '../oci/reference.js';
import { parseUpstream } from '../upstreams.js';

/**
 * Image references as docker, containerd and K3s write them, normalised the way they normalise them:
 * `nginx` is docker.io/library/nginx:latest, `rancher/pause:3.6` is docker.io/rancher/pause:3.6, a
 * first component with `.` or `:` (or `localhost`) is a registry host.
 */
export interface ImageReference {
  /** Canonical registry host: docker.io, quay.io, registry.lan:5000. */
  registry: string;
  /** Repository on that registry (Docker Hub's official images under library/). */
  repository: string;
  tag: string | undefined;
  digest: Digest | undefined;
  /** The full normalised reference, e.g. docker.io/library/nginx:latest. */
  text: string;
}

export class ImageReferenceError extends Error {}

const DEFAULT_REGISTRY = 'docker.io';

function isHostComponent(component: string): boolean {
  return component.includes('.') || component.includes(':') || component === 'localhost';
}

/** Parses and normalises one image reference; throws ImageReferenceError saying what is wrong. */
export function parseImageReference(input: string): ImageReference {
  const raw = input.trim();
  if (raw === '') throw new ImageReferenceError('empty image reference');
  if (/\s/.test(raw)) throw new ImageReferenceError(`"${raw}" contains white space`);
  if (/^[a-z]+:\/\//i.test(raw)) throw new ImageReferenceError(`"${raw}": write the reference without a URL scheme (plain HTTP hosts go in --insecure-registry)`);
  let rest = raw;
  let digest: Digest | undefined;
  const at = rest.lastIndexOf('@');
  if (at !== -1) {
    const value = rest.slice(at + 1);
    digest = tryParseDigest(value);
    if (!digest) throw new ImageReferenceError(`"${raw}": "${value}" is not a sha256:<64 hex> or sha512:<128 hex> digest`);
    rest = rest.slice(0, at);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!isValidTag(tag)) throw new ImageReferenceError(`"${raw}": "${tag}" is not a valid tag`);
  }
  const slash = rest.indexOf('/');
  let registry = DEFAULT_REGISTRY;
  let path = rest;
  if (slash !== -1 && isHostComponent(rest.slice(0, slash))) {
    const host = rest.slice(0, slash);
    try {
      registry = parseUpstream(host.toLowerCase()).host;
    } catch {
      throw new ImageReferenceError(`"${raw}": "${host}" is not a registry host`);
    }
    path = rest.slice(slash + 1);
  }
  if (registry === DEFAULT_REGISTRY && !path.includes('/')) path = `library/${path}`;
  if (path !== path.toLowerCase()) throw new ImageReferenceError(`"${raw}": repository names must be lower-case`);
  if (!isValidName(path)) {
    throw new ImageReferenceError(`"${raw}": "${path}" is not a valid repository name (lower-case letters, digits, separators . _ __ -, components joined by /, at most ${MAX_NAME_LENGTH} characters)`);
  }
  if (tag === undefined && digest === undefined) tag = 'latest';
  const text = `${registry}/${path}${tag !== undefined ? `:${tag}` : ''}${digest ? `@${digest.value}` : ''}`;
  return { registry, repository: path, tag, digest, text };
}

/**
 * The repository an image is stored under. By default the registry host is dropped: K3s'
 * --system-default-registry and registries.yaml mirrors ask a mirror for docker.io/rancher/pause as
 * /v2/rancher/pause/... With keepRegistry the host stays as the first component (a `:port`
 * becomes `_port`, since `:` cannot appear in a repository name): docker.io/rancher/pause,
 * registry.lan_5000/team/app.
 */
export function storedRepository(ref: Pick<ImageReference, 'registry' | 'repository'>, keepRegistry: boolean): string {
  if (!keepRegistry) return ref.repository;
  const name = `${ref.registry.replace(':', '_')}/${ref.repository}`;
  if (!isValidName(name)) throw new ImageReferenceError(`${ref.registry}/${ref.repository}: "${name}" is not a valid repository name`);
  return name;
}

export interface ImageListEntry {
  line: number;
  reference: ImageReference;
}

/**
 * Parses an image list: one reference a line; blank lines and `#` comments (whole-line or after
 * the reference) are ignored; duplicates (after normalisation) are dropped. Every bad line is
 * reported at once, as `FILE:LINE: reason`.
 */
export function parseImageList(text: string, source = 'image list'): ImageListEntry[] {
  const entries: ImageListEntry[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  text.split(/\r?\n/).forEach((rawLine, i) => {
    const hash = rawLine.search(/(?:^|\s)#/);
    const line = (hash === -1 ? rawLine : rawLine.slice(0, hash)).trim();
    if (line === '') return;
    try {
      const reference = parseImageReference(line);
      if (seen.has(reference.text)) return;
      seen.add(reference.text);
      entries.push({ line: i + 1, reference });
    } catch (err) {
      errors.push(`${source}:${i + 1}: ${(err as Error).message}`);
    }
  });
  if (errors.length > 0) throw new ImageReferenceError(errors.join('\n'));
  return entries;
}

export async function readImageList(path: string): Promise<ImageListEntry[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ImageReferenceError(`cannot read the image list ${path}: ${(err as Error).message}`);
  }
  return parseImageList(text, path);
}
