/** Manifest media types a registry stores and serves (OCI image-spec and Docker schema 2). */
export const MediaType = {
  OciManifest: 'application/vnd.oci.image.manifest.v1+json',
  OciIndex: 'application/vnd.oci.image.index.v1+json',
  DockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  DockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  OciEmpty: 'application/vnd.oci.empty.v1+json',
} as const;

export const MANIFEST_MEDIA_TYPES: ReadonlySet<string> = new Set([
  MediaType.OciManifest,
  MediaType.OciIndex,
  MediaType.DockerManifest,
  MediaType.DockerManifestList,
]);

export function isIndexMediaType(mediaType: string): boolean {
  return mediaType === MediaType.OciIndex || mediaType === MediaType.DockerManifestList;
}

/** The media type part of a Content-Type/Accept value, without parameters, lower-cased. */
export function bareMediaType(value: string): string {
  const semi = value.indexOf(';');
  return (semi === -1 ? value : value.slice(0, semi)).trim().toLowerCase();
}

/**
 * Whether a client's Accept header admits a stored manifest type. A header that names no manifest
 * type at all (absent, `*\/*`, `application/json`) states no preference, and any type is served;
 * one that names manifest types but not this one does not admit it (distribution answers 404 then).
 */
export function acceptsManifest(accept: string | string[] | undefined, mediaType: string): boolean {
  if (accept === undefined) return true;
  const values = (Array.isArray(accept) ? accept.join(',') : accept).split(',').map(bareMediaType);
  let namesManifestTypes = false;
  for (const value of values) {
    if (value === mediaType || value === '*/*') return true;
    if (MANIFEST_MEDIA_TYPES.has(value)) namesManifestTypes = true;
  }
  return !namesManifestTypes;
}
