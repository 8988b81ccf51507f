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
  /** Manifests an index lists. */
  manifests: Descriptor[];
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

function parseDescriptor(value: unknown, where: string): Descriptor {
  if (!isObject(value)) throw invalid(`${where} is not a descriptor object`);
  const { mediaType, digest, size } = value;
  if (typeof mediaType !== 'string' || mediaType === '') throw invalid(`${where}.mediaType is missing`);
  if (typeof digest !== 'string' || !tryParseDigest(digest)) throw invalid(`${where}.digest is not a valid sha256/sha512 digest`, { digest });
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) throw invalid(`${where}.size is not a non-negative integer`);
  const descriptor: Descriptor = { mediaType, digest, size };
  if (typeof value.artifactType === 'string') descriptor.artifactType = value.artifactType;
  if (isObject(value.annotations)) descriptor.annotations = value.annotations as Record<string, string>;
  if (Array.isArray(value.urls)) descriptor.urls = value.urls as string[];
  if (isObject(value.platform)) descriptor.platform = value.platform;
  return descriptor;
}

/**
 * Parses and validates a pushed manifest. The media type is the body's `mediaType`, else the
 * request's Content-Type; when both are given they must agree (a client can't store one type and
 * have it served as another).
 */
export function parseManifest(body: Buffer, contentType: string | undefined): ParsedManifest {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    throw invalid('body is not valid JSON');
  }
  if (!isObject(json)) throw invalid('body is not a JSON object');
  if (json.schemaVersion !== 2) throw invalid('schemaVersion must be 2 (schema 1 is not supported)', { schemaVersion: json.schemaVersion });
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
    manifests: [],
    subject: json.subject === undefined ? undefined : parseDescriptor(json.subject, 'subject'),
    artifactType: typeof json.artifactType === 'string' ? json.artifactType : undefined,
    annotations: isObject(json.annotations) ? (json.annotations as Record<string, string>) : undefined,
  };
  if (isIndexMediaType(mediaType)) {
    if (!Array.isArray(json.manifests)) throw invalid('an index needs a "manifests" array');
    result.manifests = json.manifests.map((d, i) => parseDescriptor(d, `manifests[${i}]`));
  } else {
    const config = parseDescriptor(json.config, 'config');
    if (!Array.isArray(json.layers)) throw invalid('an image manifest needs a "layers" array');
    const layers = json.layers.map((d, i) => parseDescriptor(d, `layers[${i}]`));
    result.blobs = [config, ...layers.filter((layer) => !layer.urls || layer.urls.length === 0)];
    result.artifactType ??= config.mediaType;
  }
  return result;
}

export function descriptorDigest(descriptor: Descriptor): Digest {
  return tryParseDigest(descriptor.digest)!;
}
