import type { AppliancePlan, WorkerPlan } from '../../../lib/appliance.js';
import type { AccessLogEntry } from '../../../lib/access-log.js';
import { RegistryError } from '../../../lib/oci/errors.js';
import { parseRegistryPath, splitUrl } from '../../../lib/oci/route.js';

export type GatewayRoute =
  | { kind: 'ping' }
  | {
    kind: 'worker';
    worker: WorkerPlan;
    /** URL to send to the worker: the host prefix stripped, the query kept. */
    url: string;
    /** The prefix the client used (re-added to Location and Link headers), if any. */
    prefix: string | undefined;
    repository: string | undefined;
    reference: string | undefined;
    resource: NonNullable<AccessLogEntry['kind']>;
  };

/** Encoded separators and dot segments: never valid in a registry path, refused before routing. */
const PATH_TRICKS = /%2f|%5c|%2e|%00|\\|\/\/|\/\.\.?(?:\/|$)/i;

/** Docker's reference grammar: a first component is a registry host if it has a `.` or `:`, or is localhost. */
export function isHostLike(segment: string): boolean {
  return segment.includes('.') || segment.includes(':') || segment === 'localhost';
}

/**
 * Routes a `/v2/...` request: `/v2/<upstream-host or alias>/<name>/...` to that upstream's cache
 * worker with the prefix stripped; `?ns=<host>` (containerd mirrors) to that upstream's worker;
 * everything else to the hosted registry. An unknown host prefix is NAME_UNKNOWN.
 */
export function routeRequest(rawUrl: string, plan: AppliancePlan, byPrefix: Map<string, WorkerPlan>): GatewayRoute {
  const { path, query } = splitUrl(rawUrl);
  if (PATH_TRICKS.test(path)) {
    throw new RegistryError('NAME_INVALID', { path: path.slice(0, 300) }, { message: 'invalid path: encoded separators, empty or dot segments are not allowed' });
  }
  if (path === '/v2' || path === '/v2/') return { kind: 'ping' };
  if (!path.startsWith('/v2/')) throw new RegistryError('NAME_UNKNOWN', { path: path.slice(0, 300) }, { message: 'not a registry endpoint', status: 404 });
  const rest = path.slice(4);
  const slash = rest.indexOf('/');
  const first = slash === -1 ? rest : rest.slice(0, slash);
  const search = rawUrl.includes('?') ? rawUrl.slice(rawUrl.indexOf('?')) : '';

  let worker = plan.hosted;
  let workerPath = path;
  let prefix: string | undefined;
  const byFirst = first === '_catalog' ? undefined : byPrefix.get(first.toLowerCase());
  if (byFirst) {
    worker = byFirst;
    prefix = first;
    // `/v2/<prefix>` alone is that upstream's base (`/v2/`), not a repository named like the prefix.
    workerPath = slash === -1 ? '/v2/' : `/v2/${rest.slice(slash + 1)}`;
  } else if (isHostLike(first) && first !== '_catalog') {
    const known = [...byPrefix.keys()].sort().join(', ') || 'none';
    throw new RegistryError('NAME_UNKNOWN', { upstream: first.slice(0, 255) }, {
      message: `unknown upstream registry "${first}": this appliance caches ${known}`,
    });
  } else {
    const ns = query.get('ns')?.toLowerCase();
    const byNamespace = ns ? byPrefix.get(ns) : undefined;
    if (byNamespace) worker = byNamespace;
  }

  let repository: string | undefined;
  let reference: string | undefined;
  let resource: NonNullable<AccessLogEntry['kind']> = 'other';
  try {
    const route = parseRegistryPath(workerPath);
    resource = route.kind === 'manifest' ? 'manifest' : route.kind === 'upload' ? 'upload' : route.kind;
    if ('name' in route) repository = route.name;
    if (route.kind === 'manifest') reference = route.reference;
    else if (route.kind === 'blob' || route.kind === 'referrers') reference = route.digest;
  } catch {
    // The worker answers malformed paths with the right OCI error; the log just has less detail.
  }
  return { kind: 'worker', worker, url: `${workerPath}${search}`, prefix, repository, reference, resource };
}

/** Re-adds the client's upstream prefix to a worker's Location or Link header value. */
export function addPrefix(value: string, prefix: string): string {
  return value.replace(/(^|<)\/v2\//g, `$1/v2/${prefix}/`);
}

/** Prefix (host or alias, lower-case) → worker. */
export function prefixIndex(plan: AppliancePlan): Map<string, WorkerPlan> {
  const index = new Map<string, WorkerPlan>();
  for (const worker of plan.proxies) for (const prefix of worker.prefixes) index.set(prefix.toLowerCase(), worker);
  return index;
}
