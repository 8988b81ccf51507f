import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.js';
import type { StorageDriver } from './driver/driver.js';
import { acquireLease, readLeaseRecord, type HeldLease } from './lease.js';

/**
 * A single flight across the appliances sharing a store: work whose result lands in the store (a
 * manifest fetched from the upstream, a tag revalidated) is done by one appliance while the others
 * watch the store for the result. Coordination is a store lease (lib/storage/lease.ts) and nothing else.
 *
 *   tryLocal() answers → done (no lease request at all).
 *   Lease acquired → tryLocal() again (a flight may have ended since), else fetch() with the lease
 *     renewed meanwhile; then the lease key is DELETED, success or failure (see runHeld()).
 *   Lease held by another → whileHeld() may answer at once (a stale copy); else poll tryLocal() every
 *     pollMs (backing off to maxPollMs) until it answers. Meanwhile:
 *       - the lease key vanished: its holder finished. Its result is in the store before the delete, so
 *         one more tryLocal() sees it; if not, the holder failed (a 404 upstream, an outage) and this
 *         appliance fetches for itself, without a lease: N waiters cost at most N upstream requests
 *         in parallel, never a chain of N lease holders failing one after another.
 *       - the lease expired (its holder died without renewing): take it over and fetch.
 *       - maxWaitMs passed (a live holder stuck on a slow upstream): fetch anyway, logged.
 */
export interface StoreFlightOptions<T> {
  /** The result if the store already has it, else undefined. Must read the store (not memory) each time. */
  tryLocal: () => Promise<T | undefined>;
  /** Does the work; its result must be in the store when it resolves. */
  fetch: () => Promise<T>;
  /** Another appliance holds the lease: an answer that need not wait for it (a stale copy), or undefined to wait. */
  whileHeld?: () => Promise<T | undefined>;
  /** The lease's time to live; renewed every ttl/3 while fetch() runs. */
  ttlMs: number;
  /** First poll interval while another appliance holds the lease; doubles up to maxPollMs. */
  pollMs?: number;
  maxPollMs?: number;
  /** Longest wait for a live holder before fetching anyway. */
  maxWaitMs: number;
  log?: Logger;
  now?: () => number;
}

export type StoreFlightOutcome = 'local' | 'fetched' | 'waited' | 'held-answer' | 'took-over' | 'holder-failed' | 'wait-timeout';

/** storeFlight's result and how it was reached (for tests and logs). */
export interface StoreFlightResult<T> {
  value: T;
  outcome: StoreFlightOutcome;
}

export async function storeFlight<T>(driver: StorageDriver, leaseName: string, options: StoreFlightOptions<T>): Promise<StoreFlightResult<T>> {
  const now = options.now ?? Date.now;
  const first = await options.tryLocal();
  if (first !== undefined) return { value: first, outcome: 'local' };
  const started = now();
  let pollMs = options.pollMs ?? 25;
  const maxPollMs = options.maxPollMs ?? 250;
  let whileHeld = options.whileHeld;
  let tookOver = false;
  for (;;) {
    const attempt = await acquireLease(driver, leaseName, { ttlMs: options.ttlMs, now });
    if (attempt.acquired) return runHeld(attempt.lease, options, tookOver ? 'took-over' : 'fetched');
    if (whileHeld) {
      const answer = await whileHeld();
      if (answer !== undefined) return { value: answer, outcome: 'held-answer' };
      whileHeld = undefined;
    }
    // Wait for the holder: until it answers, vanishes, expires, or we have waited long enough.
    for (;;) {
      await sleep(pollMs);
      pollMs = Math.min(pollMs * 2, maxPollMs);
      const answer = await options.tryLocal();
      if (answer !== undefined) return { value: answer, outcome: 'waited' };
      if (now() - started >= options.maxWaitMs) {
        options.log?.warn({ lease: leaseName, waitedMs: now() - started }, 'store flight: the lease holder did not answer in time; fetching anyway');
        return { value: await options.fetch(), outcome: 'wait-timeout' };
      }
      const record = await readLeaseRecord(driver, leaseName);
      if (!record) {
        // Deleted by its holder after it stored its result (if it had one): read once more, in that order.
        const after = await options.tryLocal();
        if (after !== undefined) return { value: after, outcome: 'waited' };
        return { value: await options.fetch(), outcome: 'holder-failed' };
      }
      if (record.expiresAt <= now()) {
        tookOver = true;
        break; // a dead holder's record: acquireLease replaces it conditionally (one contender wins)
      }
    }
  }
}

async function runHeld<T>(lease: HeldLease, options: StoreFlightOptions<T>, outcome: 'fetched' | 'took-over'): Promise<StoreFlightResult<T>> {
  lease.keepRenewed(() => options.log?.warn({ lease: lease.name }, 'store flight: lease taken over during the fetch (it outlasted the lease time); finishing anyway'));
  try {
    const again = await options.tryLocal();
    if (again !== undefined) return { value: again, outcome: 'local' };
    return { value: await options.fetch(), outcome };
  } finally {
    // Deleted, not released: the store does not keep one key per manifest or tag ever fetched. The
    // delete is unconditional (HeldLease.releaseByDelete: only while the lease is ours and live); if
    // another appliance took it over after all, the cost is one more identical fetch: results are
    // content-addressed (manifests) or the upstream's current answer (tags).
    await lease.releaseByDelete().catch((err: unknown) => {
      // Left behind, the record expires within its ttl and the next flight replaces it.
      options.log?.warn({ lease: lease.name, err }, 'store flight: could not delete the finished lease');
    });
  }
}
