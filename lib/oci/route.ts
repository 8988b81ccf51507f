import { RegistryError } from './errors.js';
import { parseRepositoryName } from './reference.js';

/**
 * What a `/v2/...` path addresses. Parsed from the raw (still percent-encoded) path so that no
 * decoding step can smuggle `/`, `..` or NUL into a name: the spec's name grammar has no `%`, so an
 * encoded byte anywhere in a name is simply invalid.
 */
export type RegistryRoute =
  | { kind: 'base' }
  | { kind: 'catalog' }
  | { kind: 'manifest'; name: string; reference: string }
  | { kind: 'blob'; name: string; digest: string }
  | { kind: 'upload'; name: string; uploadId: string | undefined }
  | { kind: 'tags'; name: string }
  | { kind: 'referrers'; name: string; digest: string };

// Greedy `(.+)` takes the last match, so a repository may itself contain `manifests` or `blobs`.
const ROUTES: Array<[RegExp, (m: RegExpExecArray) => RegistryRoute]> = [
  [/^\/v2\/(.+)\/manifests\/([^/]+)$/, (m) => ({ kind: 'manifest', name: m[1]!, reference: m[2]! })],
  [/^\/v2\/(.+)\/blobs\/uploads(?:\/([^/]*))?$/, (m) => ({ kind: 'upload', name: m[1]!, uploadId: m[2] || undefined })],
  [/^\/v2\/(.+)\/blobs\/([^/]+)$/, (m) => ({ kind: 'blob', name: m[1]!, digest: m[2]! })],
  [/^\/v2\/(.+)\/tags\/list$/, (m) => ({ kind: 'tags', name: m[1]! })],
  [/^\/v2\/(.+)\/referrers\/([^/]+)$/, (m) => ({ kind: 'referrers', name: m[1]!, digest: m[2]! })],
];

/** `?ns=` names an upstream registry host (containerd mirrors); only a host-shaped value is echoed as OCI-Namespace. */
const ECHOED_NAMESPACE = /^[a-zA-Z0-9.-]+(?::\d{1,5})?$/;

/** The OCI-Namespace response header for a request's `?ns=` value, if it gets one. */
export function echoedNamespace(ns: string | null | undefined): string | undefined {
  return ns && ECHOED_NAMESPACE.test(ns) ? ns : undefined;
}

export function splitUrl(url: string): { path: string; query: URLSearchParams } {
  const q = url.indexOf('?');
  if (q === -1) return { path: url, query: new URLSearchParams() };
  return { path: url.slice(0, q), query: new URLSearchParams(url.slice(q + 1)) };
}

/** Maps a raw request path (no query) to a route; unknown shapes are NAME_INVALID or 404 NAME_UNKNOWN. */
export function parseRegistryPath(path: string): RegistryRoute {
  if (path === '/v2/' || path === '/v2') return { kind: 'base' };
  if (path === '/v2/_catalog') return { kind: 'catalog' };
  for (const [pattern, build] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    const route = build(match);
    if ('name' in route) parseRepositoryName(route.name);
    return route;
  }
  throw new RegistryError('NAME_UNKNOWN', { path: path.slice(0, 300) }, {
    message: 'no registry endpoint at this path',
    status: 404,
  });
}
