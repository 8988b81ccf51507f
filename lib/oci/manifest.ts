import { RegistryError } from './errors.js';
import { tryParseDigest, type Digest } from './digest.js';
import { MANIFEST_MEDIA_TYPES, MediaType, bareMediaType, isIndexMediaType } from './media-types.js';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  urls?: string[];
  platform?: Record<string, unknown>;
}

/** What a registry needs to know of a manifest: its type and what it points at. */
export interface ParsedManifest {
  mediaType: string;
  /** Blobs an image manifest needs (config and layers; foreign layers with `urls` excluded). */
  blobs: Descriptor[];
  /** The field each of `blobs` came from (`config`, `layers[2]`), for error messages. */
  blobFields: string[];
  /** Manifests an index lists. */
  manifests: Descriptor[];
  /** The field each of `manifests` came from (`manifests[0]`). */
  manifestFields: string[];
  subject: Descriptor | undefined;
  /** artifactType for the referrers API: the manifest's own, else an image manifest's config type. */
  artifactType: string | undefined;
  annotations: Record<string, string> | undefined;
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError('MANIFEST_INVALID', detail, { message: `manifest invalid: ${message}` });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** A value for an error's detail: strings and numbers as they are, anything else by its type (a
 * hostile 10,000-level nested object must not reach JSON.stringify, whose recursion would overflow). */
function shown(value: unknown): unknown {
  if (typeof value === 'string') return value.slice(0, 200);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null || value === undefined) return value;
  return Array.isArray(value) ? '(an array)' : `(${typeof value})`;
}

export interface ParseOptions {
  /**
   * Refuse annotations that are not string → string: on for pushes. Off (the default) for content
   * already stored or fetched from an upstream (GC, cache fills, mirror, seed): it is kept and served
   * byte for byte, and bad annotations are only left out of the parsed result.
   */
  strict?: boolean;
}

/**
 * `annotations` of a manifest or descriptor: a map of strings to strings (OCI image-spec). Checked
 * one level deep without recursion, so a deeply nested value is refused, never walked.
 */
function parseAnnotations(value: unknown, where: string, strict: boolean): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) {
    if (strict) throw invalid(`${where} must be an object of string values`, { field: where });
    return undefined;
  }
  for (const [key, entry] of Object.entries(value)) {
    if (typeof entry !== 'string') {
      if (!strict) return undefined;
      const field = `${where}[${JSON.stringify(key.slice(0, 100))}]`;
      const kind = Array.isArray(entry) ? 'an array' : entry === null ? 'null' : typeof entry === 'object' ? 'an object' : `a ${typeof entry}`;
      throw invalid(`${field} is ${kind}: annotation values must be strings`, { field });
    }
  }
  return value as Record<string, string>;
}

function parseDescriptor(value: unknown, where: string, strict: boolean): Descriptor {
  if (!isObject(value)) throw invalid(`${where} is not a descriptor object`);
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== 'string' || mediaType === '') throw invalid(`${where}.mediaType is missing`);
  if (typeof digest !== 'string' || !tryParseDigest(digest)) throw invalid(`${where}.digest is not a valid sha256/sha512 digest`, { digest: shown(digest) });
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`${where}.size is not a non-negative integer`);
  const descriptor: Descriptor = { mediaType, digest, size };
  if (typeof value.artifactType === 'string') descriptor.artifactType = value.artifactType;
  const annotations = parseAnnotations(value.annotations, `${where}.annotations`, strict);
  if (annotations) descriptor.annotations = annotations;
  if (Array.isArray(value.urls)) descriptor.urls = value.urls as string[];
  if (isObject(value.platform)) descriptor.platform = value.platform;
  return descriptor;
}

/**
 * Parses and validates a pushed manifest. The media type is the body's `mediaType`, else the
 * request's Content-Type; when both are given they must agree (a client can't store one type and
 * have it served as another).
 */
export function parseManifest(body: Buffer, contentType: string | undefined, { strict = false }: ParseOptions = {}): ParsedManifest {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw invalid('body is not valid JSON');
  }
  if (!isObject(json)) throw invalid('body is not a JSON object');
  if (json.schemaVersion !== 2) throw invalid('schemaVersion must be 2 (schema 1 is not supported)', { schemaVersion: shown(json.schemaVersion) });
  const declared = typeof json.mediaType === 'string' ? json.mediaType : undefined;
  const header = contentType ? bareMediaType(contentType) : undefined;
  let mediaType = declared ?? header;
  if (declared && header && MANIFEST_MEDIA_TYPES.has(header) && header !== declared) {
    throw invalid('Content-Type does not match the manifest mediaType', { contentType: header, mediaType: declared });
  }
  if (!mediaType || !MANIFEST_MEDIA_TYPES.has(mediaType)) {
    // OCI manifests may omit mediaType; infer from the shape only when nothing says otherwise.
    if (!declared && Array.isArray(json.manifests)) mediaType = MediaType.OciIndex;
    else if (!declared && isObject(json.config)) mediaType = MediaType.OciManifest;
    else throw invalid(`unsupported manifest media type ${JSON.stringify(mediaType ?? null)}`);
  }

  const result: ParsedManifest = {
    mediaType,
    blobs: [],
    blobFields: [],
    manifests: [],
    manifestFields: [],
    subject: json.subject === undefined ? undefined : parseDescriptor(json.subject, 'subject', strict),
    artifactType: typeof json.artifactType === 'string' ? json.artifactType : undefined,
    annotations: parseAnnotations(json.annotations, 'annotations', strict),
  };
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(json.manifests)) throw invalid('an index needs a "manifests" array');
    result.manifests = json.manifests.map((d, i) => parseDescriptor(d, `manifests[${i}]`, strict));
    result.manifestFields = result.manifests.map((_, i) => `manifests[${i}]`);
  } else {
    const config = parseDescriptor(json.config, 'config', strict);
    if (!Array.isArray(json.layers)) throw invalid('an image manifest needs a "layers" array');
    const layers = json.layers.map((d, i) => ({ field: `layers[${i}]`, layer: parseDescriptor(d, `layers[${i}]`, strict) }));
    const local = layers.filter(({ layer }) => !layer.urls || layer.urls.length === 0);
    result.blobs = [config, ...local.map(({ layer }) => layer)];
    result.blobFields = ['config', ...local.map(({ field }) => field)];
    result.artifactType ??= config.mediaType;
  }
  return result;
}

export function descriptorDigest(descriptor: Descriptor): Digest {
  return tryParseDigest(descriptor.digest)!;
}
