import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAuths, parseUpstream, type AuthsEntry } from './upstreams.js';

/**
 * Header a cache worker sets on manifest and blob responses: `hit` (served from the store) or
 * `miss` (fetched from upstream). The gateway counts it in its metrics and removes it.
 */
export const CACHE_RESULT_HEADER = 'x-stevedore-cache';

/**
 * A worker's internal status (JSON: for a cache worker its upstream's circuit, last error and rate
 * limit), read by the gateway's console over the worker's socket; outside /v2/, so never forwarded.
 */
export const WORKER_STATUS_PATH = '/_stevedore/status';

/**
 * Another appliance on the same store asking for a cache fill in progress here: the request carries
 * the shared STEVEDORE_PEER_TOKEN in this header instead of a user's credentials.
 */
export const PEER_TOKEN_HEADER = 'x-stevedore-peer-token';
/**
 * Set by the gateway (only) on a peer's blob request it admitted: the cache worker serves the blob
 * from its store or from a fill in progress, and never starts a fill for it. Removed from clients' requests.
 */
export const PEER_FILL_HEADER = 'x-stevedore-peer-fill';
/**
 * Set by the gateway (only) on a blob GET to a cache worker: if the blob is being fetched into a local
 * spool file, answer with the fill's progress (BlobFill.spoolEvents, this header set to `events`)
 * instead of its bytes, and the gateway reads them from the spool itself; if not, `none` (204). Removed
 * from clients' requests.
 */
export const FILL_SPOOL_HEADER = 'x-stevedore-fill-spool';

/** One registry worker of the appliance: the hosted registry, or the cache of one upstream. */
export interface WorkerPlan {
  /** PM2 app name and socket file name. */
  name: string;
  kind: 'hosted' | 'proxy';
  /** Upstream host (canonical, e.g. docker.io, registry.lan:5000) of a proxy worker. */
  upstream?: string;
  /** URL the worker fetches from (proxy only). */
  upstreamUrl?: string;
  /** Path prefixes that route to this worker: the host, and its alias if one is set. */
  prefixes: string[];
  socketPath: string;
}

export interface AppliancePlan {
  hosted: WorkerPlan;
  proxies: WorkerPlan[];
}

export interface PlanInput {
  runDir: string;
  pullSecretPath: string;
  ignoreRegistries: string[];
  /** alias → upstream host (for hosts with a port, which cannot be an image path segment). */
  aliases: Record<string, string>;
}

/** A path segment usable as an upstream prefix: a valid first component of an image name. */
const ALIAS_PATTERN = /^[a-z0-9]+(?:[._-][a-z0-9]+)*$/;

/** Parses `alias=host alias2=host:port` (space or comma separated). */
export function parseAliases(raw: string): Record<string, string> {
  const aliases: Record<string, string> = {};
  for (const item of raw.split(/[\s,]+/).filter(Boolean)) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new Error(`expected alias=host, got "${item}"`);
    const alias = item.slice(0, eq).toLowerCase();
    if (!ALIAS_PATTERN.test(alias)) throw new Error(`alias "${alias}" is not a valid image path segment`);
    aliases[alias] = parseUpstream(item.slice(eq + 1)).host;
  }
  return aliases;
}

/** Reads the pull secret (absent file → no upstreams); synchronous because PM2 loads the ecosystem file with require(). */
export function readPullSecret(path: string): AuthsEntry[] {
  if (!existsSync(path)) return [];
  return parseAuths(readFileSync(path, 'utf8'), path);
}

/**
 * Derives the appliance's workers from its configuration: the hosted registry plus one cache
 * worker per `auths` entry of the pull secret, minus the ignored registries. Both the gateway
 * (routing) and ecosystem.config.js (PM2 apps) use this, so they always agree.
 */
export function planAppliance(input: PlanInput, entries: AuthsEntry[]): AppliancePlan {
  const hosted: WorkerPlan = { name: 'registry-hosted', kind: 'hosted', prefixes: [], socketPath: join(input.runDir, 'hosted.sock') };
  // Compared by canonical host, as the pull secret's keys are: index.docker.io or a URL form names docker.io.
  const ignored = new Set(input.ignoreRegistries.map((h) => {
    try {
      return parseUpstream(h).host;
    } catch {
      return h.toLowerCase();
    }
  }));
  const proxies: WorkerPlan[] = [];
  const seen = new Set<string>();
  for (const entry of entries) {
    const host = entry.endpoint.host;
    if (ignored.has(host) || seen.has(host)) continue;
    seen.add(host);
    const prefixes = [host, ...Object.entries(input.aliases).filter(([, target]) => target === host).map(([alias]) => alias)];
    const safe = host.replace(/[^a-z0-9.-]/g, '_');
    proxies.push({
      name: `registry-${safe}`, kind: 'proxy', upstream: host, upstreamUrl: entry.endpoint.url.href, prefixes,
      socketPath: join(input.runDir, `${safe}.sock`),
    });
  }
  for (const [alias, target] of Object.entries(input.aliases)) {
    if (!seen.has(target)) throw new Error(`alias ${alias} names ${target}, which is not an upstream in ${input.pullSecretPath}`);
  }
  return { hosted, proxies };
}
