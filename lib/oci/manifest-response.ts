import type { IncomingHttpHeaders } from 'node:http';
import { RegistryError } from './errors.js';
import { acceptsManifest } from './media-types.js';
import type { StoredManifest } from '../storage/manifest-reader.js';

export interface ManifestResponse {
  status: 200 | 304;
  headers: Record<string, string | number>;
  /** Undefined for HEAD and 304. */
  body: Buffer | undefined;
}

/**
 * The answer to GET/HEAD of a stored manifest, honouring Accept and If-None-Match: the registry
 * worker and the gateway (which answers stored manifests itself) both send exactly this.
 * MANIFEST_UNKNOWN when the Accept header names manifest types but not the stored one.
 */
export function manifestResponse(manifest: StoredManifest, name: string, ref: string, method: string, headers: IncomingHttpHeaders): ManifestResponse {
  if (!acceptsManifest(headers.accept, manifest.mediaType)) {
    throw new RegistryError('MANIFEST_UNKNOWN', { name, reference: ref, mediaType: manifest.mediaType }, {
      message: `manifest is ${manifest.mediaType}, which the Accept header does not allow`,
    });
  }
  const etag = `"${manifest.digest.value}"`;
  const out = {
    'content-type': manifest.mediaType,
    'docker-content-digest': manifest.digest.value,
    etag,
    'content-length': manifest.body.length,
  };
  if (headers['if-none-match'] === etag) return { status: 304, headers: out, body: undefined };
  return { status: 200, headers: out, body: method === 'HEAD' ? undefined : manifest.body };
}
