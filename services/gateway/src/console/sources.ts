import type { AppliancePlan, WorkerPlan } from '../../../../lib/appliance.js';

/** How the console names one source of images: the hosted registry, or an upstream with its alias. */
export interface SourceLabel {
  /** `hosted`, or the upstream's host as in the pull secret (the API's `source`). */
  source: string;
  kind: 'hosted' | 'proxy';
  /** The first STEVEDORE_UPSTREAM_ALIASES alias of the upstream, if any. */
  alias: string | null;
  /**
   * The path prefix a pull through the gateway starts with (`<gateway>/<prefix>/<repository>`):
   * the alias when one is set, else the host; null when neither can be (a host with a port and no
   * alias: `:` is not allowed in an image path). Empty for the hosted registry (no prefix).
   */
  pullPrefix: string | null;
  /** Every prefix that routes to it (the gateway's router: host and aliases). */
  prefixes: string[];
}

/**
 * The alias is what the operator chose for users to type (and the only prefix that works for a
 * host with a port), so it goes first; the host prefix works too when it has no port.
 */
export function pullPrefixOf(worker: WorkerPlan): string | null {
  if (worker.kind === 'hosted') return '';
  const [host, ...aliases] = worker.prefixes;
  return aliases[0] ?? (host && !host.includes(':') ? host : null);
}

export function sourceLabel(worker: WorkerPlan): SourceLabel {
  return {
    source: worker.kind === 'hosted' ? 'hosted' : worker.upstream ?? '',
    kind: worker.kind,
    alias: worker.kind === 'hosted' ? null : worker.prefixes[1] ?? null,
    pullPrefix: pullPrefixOf(worker),
    prefixes: worker.prefixes,
  };
}

export function sourceLabels(plan: AppliancePlan): SourceLabel[] {
  return [plan.hosted, ...plan.proxies].map(sourceLabel);
}

/** `repository` as pulled through the gateway (its host added by the page), or null when no prefix routes. */
export function pullReference(worker: WorkerPlan, repository: string): string | null {
  const prefix = pullPrefixOf(worker);
  if (prefix === null) return null;
  return prefix ? `${prefix}/${repository}` : repository;
}
