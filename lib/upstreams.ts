import { readFile } from 'node:fs/promises';
import { NAMESPACE_PATTERN } from './storage/layout.js';

/** Credentials for one upstream registry; absent means anonymous. */
export interface UpstreamCredentials {
  username: string;
  password: string;
}

/** An upstream registry: where to reach it and the host that names it (its cache namespace, its path prefix). */
export interface UpstreamEndpoint {
  /** Base URL requests go to, e.g. https://registry-1.docker.io. */
  url: URL;
  /** Canonical host name, e.g. docker.io, quay.io, registry.lan:5000. */
  host: string;
  /** Docker Hub puts single-segment names under library/. */
  isDockerHub: boolean;
}

const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);

/**
 * Parses an upstream as given in --upstream or as a key of a docker `auths` file: a host
 * (`quay.io`, `registry.lan:5000`, https by default) or a URL (`http://127.0.0.1:5000`,
 * `https://index.docker.io/v1/`; any path is ignored). Docker Hub's names map to its registry endpoint.
 */
export function parseUpstream(value: string): UpstreamEndpoint {
  const raw = value.trim();
  const withScheme = /^[a-z]+:\/\//i.test(raw) ? raw : `https://${raw}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new Error(`invalid upstream "${value}": expected a host or an http(s) URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new Error(`invalid upstream "${value}": only http and https are supported`);
  const host = url.host.toLowerCase();
  if (DOCKER_HUB_ALIASES.has(host)) {
    return { url: new URL('https://registry-1.docker.io'), host: 'docker.io', isDockerHub: true };
  }
  if (!NAMESPACE_PATTERN.test(host)) throw new Error(`invalid upstream "${value}": "${host}" is not a registry host name`);
  return { url: new URL(`${url.protocol}//${url.host}`), host, isDockerHub: false };
}

/** The repository name to ask the upstream for: Docker Hub's official images live under library/. */
export function upstreamRepository(endpoint: UpstreamEndpoint, name: string): string {
  return endpoint.isDockerHub && !name.includes('/') ? `library/${name}` : name;
}

export interface AuthsEntry {
  endpoint: UpstreamEndpoint;
  credentials: UpstreamCredentials | undefined;
}

/**
 * Parses a docker `auths` file (pull-secret.json): `{"auths":{"quay.io":{"auth":"base64(user:pass)"}}}`.
 * An entry without `auth` (or username/password) is anonymous. The password may contain `:`.
 */
export function parseAuths(json: string, source = 'auths file'): AuthsEntry[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw new Error(`${source} is not valid JSON`);
  }
  const auths = (parsed as { auths?: unknown })?.auths;
  if (typeof auths !== 'object' || auths === null || Array.isArray(auths)) throw new Error(`${source} has no "auths" object`);
  const entries: AuthsEntry[] = [];
  for (const [key, value] of Object.entries(auths as Record<string, unknown>)) {
    const endpoint = parseUpstream(key);
    const entry = (value ?? {}) as { auth?: unknown; username?: unknown; password?: unknown };
    let credentials: UpstreamCredentials | undefined;
    if (typeof entry.auth === 'string' && entry.auth !== '') {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon <= 0) throw new Error(`${source}: the "auth" of ${key} is not base64 of user:password`);
      credentials = { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    } else if (typeof entry.username === 'string' && typeof entry.password === 'string') {
      credentials = { username: entry.username, password: entry.password };
    }
    entries.push({ endpoint, credentials });
  }
  return entries;
}

export async function readAuthsFile(path: string): Promise<AuthsEntry[]> {
  return parseAuths(await readFile(path, 'utf8'), path);
}

/** Credentials for `endpoint` from an auths file's entries (matched by canonical host). */
export function credentialsFor(entries: AuthsEntry[], endpoint: UpstreamEndpoint): UpstreamCredentials | undefined {
  return entries.find((e) => e.endpoint.host === endpoint.host)?.credentials;
}
