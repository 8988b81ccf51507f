import { ConfigError, loadCleanerConfig, storageLocationOf, type CleanerConfig } from '../../../lib/config.js';
import { createLogger, type Logger } from '../../../lib/log.js';
import { formatDuration } from '../../../lib/duration.js';
import { recordCleanerRun, type CleanerRun } from '../../../lib/storage/cleaner-runs.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { openConfiguredStorage } from '../../../lib/storage/driver/open.js';
import { applyEviction, humanSize, planEviction, type EvictionPlan } from '../../../lib/storage/eviction.js';
import { writeInventorySnapshot } from '../../../lib/storage/inventory-snapshot.js';
import { acquireLease, type HeldLease, type LeaseRecord } from '../../../lib/storage/lease.js';
import { compactServedIndex } from '../../../lib/storage/served-index.js';
import { collectGarbage } from './gc.js';

function openStore(config: CleanerConfig): Promise<StorageDriver> {
  return openConfiguredStorage(storageLocationOf(config, config.root), config);
}

/**
 * After a (real) plan: fold the loggers' served batches into the snapshot (dropping blobs no longer
 * stored) and keep the plan's figures for the console. Neither may fail the run.
 */
async function afterPlan(driver: StorageDriver, plan: EvictionPlan, log: Logger): Promise<void> {
  await writeInventorySnapshot(driver, plan).catch((err: unknown) => log.warn({ err }, 'cleaner: inventory snapshot not written'));
  await compactServedIndex(driver, { isStored: (digest) => plan.stored.has(digest) })
    .then((result) => log.debug(result, 'cleaner: served index compacted'), (err: unknown) => log.warn({ err }, 'cleaner: served index not compacted'));
}

/** The lease every non-dry cleaner run and GC holds: one at a time across the appliances on a store. */
const CLEANER_LEASE = 'cleaner';
/** `stevedore clean`/`gc` exit code when another cleaner holds the lease (EX_TEMPFAIL: try again later). */
export const LEASE_HELD_EXIT_CODE = 75;

function describeHolder(heldBy: LeaseRecord): { holder: string; until: string } {
  return { holder: heldBy.holder, until: new Date(heldBy.expiresAt).toISOString() };
}

/**
 * Runs `work` holding the cleaner lease (renewed while it runs, released after); undefined without
 * running it when another holds the lease. A lease lost mid-run is logged; `work` checks `lease.lost`
 * before destructive steps.
 */
async function withCleanerLease<T>(driver: StorageDriver, config: CleanerConfig, log: Logger, what: string, work: (lease: HeldLease) => Promise<T>): Promise<{ ran: true; value: T } | { ran: false; heldBy: LeaseRecord }> {
  const attempt = await acquireLease(driver, CLEANER_LEASE, { ttlMs: config.leaseTime });
  if (!attempt.acquired) return { ran: false, heldBy: attempt.heldBy };
  const { lease } = attempt;
  log.info({ holder: lease.holder, until: new Date(lease.expiresAt).toISOString() }, `${what}: cleaner lease acquired`);
  lease.keepRenewed((err) => log.error({ err, holder: lease.holder }, `${what}: cleaner lease lost (taken over after expiry); stopping before further removals`));
  try {
    return { ran: true, value: await work(lease) };
  } finally {
    await lease.release().then(
      () => log.info({ holder: lease.holder }, `${what}: cleaner lease released`),
      (err: unknown) => log.warn({ err }, `${what}: cleaner lease not released (it expires by itself)`));
  }
}

function load(command: string, argv: readonly string[]): CleanerConfig | number {
  try {
    return loadCleanerConfig(argv);
  } catch (err) {
    process.stderr.write(`stevedore ${command}: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }
}

/** One run; what it did, for the console's chart (undefined for a dry run). */
async function cleanOnce(config: CleanerConfig, driver: StorageDriver, log: Logger, lease?: HeldLease): Promise<CleanerRun | undefined> {
  const plan = await planEviction(driver, { maxSize: config.maxSize, thresholdPercentage: config.thresholdPercentage, graceMs: config.grace });
  if (!config.dryRun) await afterPlan(driver, plan, log);
  if (plan.evict.length === 0) {
    log.info({ usage: humanSize(plan.usage), hosted: humanSize(plan.hosted), limit: humanSize(plan.limit), trigger: humanSize(plan.trigger), pinned: humanSize(plan.pinned) }, 'cleaner: nothing to evict');
    return config.dryRun ? undefined : { at: Date.now(), usageBefore: plan.usage, evictedBlobs: 0, freedBytes: 0 };
  }
  if (config.dryRun) {
    log.info({
      wouldEvict: plan.evict.length, bytes: humanSize(plan.evict.reduce((sum, b) => sum + b.size, 0)), usage: humanSize(plan.usage), limit: humanSize(plan.limit),
      blobs: plan.evict.slice(0, 100).map((b) => `${b.digest.value} ${humanSize(b.size)} (${b.reason})`),
    }, 'cleaner (dry run): would evict');
    return undefined;
  }
  if (lease?.lost) return undefined;
  const freed = await applyEviction(driver, plan, log);
  return { at: Date.now(), usageBefore: plan.usage, evictedBlobs: plan.evict.length, freedBytes: freed };
}

/** `stevedore cleaner`: the PM2 service. Garbage collection at start-up, then an eviction run every CLEANER_RUNEVERY_TIME. */
export async function runCleanerService(argv: readonly string[]): Promise<number> {
  const config = load('cleaner', argv);
  if (typeof config === 'number') return config;
  const log = createLogger('cleaner', config.logLevel);
  const driver = await openStore(config);
  log.info({ root: config.root, store: driver.location, maxSize: humanSize(config.maxSize), threshold: config.thresholdPercentage, runEvery: formatDuration(config.runEvery), grace: formatDuration(config.grace), dryRun: config.dryRun }, 'cleaner started');
  process.send?.('ready');
  let stopped = false;
  let wake: (() => void) | undefined;
  let sleeping: NodeJS.Timeout | undefined;
  const stop = () => {
    stopped = true;
    clearTimeout(sleeping);
    wake?.();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    // CLEANER_DRY_RUN holds for the service too: it then only logs what it would remove (and needs no lease).
    const gc = (lease?: HeldLease) => collectGarbage(driver, { graceMs: config.grace, uploadTtlMs: config.uploadTtl, dryRun: config.dryRun, log, stillHeld: () => !lease?.lost });
    if (config.dryRun) await gc();
    else {
      const outcome = await withCleanerLease(driver, config, log, 'gc', gc);
      if (!outcome.ran) log.info(describeHolder(outcome.heldBy), 'gc: skipped, another cleaner holds the lease');
    }
  } catch (err) {
    log.error({ err }, 'garbage collection failed');
  }
  while (!stopped) {
    try {
      if (config.dryRun) await cleanOnce(config, driver, log);
      else {
        const outcome = await withCleanerLease(driver, config, log, 'cleaner', (lease) => cleanOnce(config, driver, log, lease));
        if (!outcome.ran) log.info(describeHolder(outcome.heldBy), 'cleaner: run skipped, another cleaner holds the lease');
        else if (outcome.value) await recordCleanerRun(config.root, outcome.value, Date.now() + config.runEvery);
      }
    } catch (err) {
      log.error({ err }, 'cleaner run failed');
    }
    await new Promise<void>((resolve) => {
      wake = resolve;
      sleeping = setTimeout(resolve, config.runEvery);
    });
  }
  return 0;
}

/** `stevedore clean [--dry-run]`: one eviction run now; with --dry-run, what it would evict and why. */
export async function runClean(argv: readonly string[]): Promise<number> {
  const config = load('clean', argv);
  if (typeof config === 'number') return config;
  const log = createLogger('cleaner', config.logLevel);
  const driver = await openStore(config);
  if (config.dryRun) return cleanCommand(config, driver, log);
  const outcome = await withCleanerLease(driver, config, log, 'clean', (lease) => cleanCommand(config, driver, log, lease));
  if (outcome.ran) return outcome.value;
  return refuseHeld('clean', outcome.heldBy);
}

function refuseHeld(command: string, heldBy: LeaseRecord): number {
  const { holder, until } = describeHolder(heldBy);
  process.stderr.write(`stevedore ${command}: another cleaner is running on this store (lease "${CLEANER_LEASE}" held by ${holder} until ${until}); try again later or use --dry-run\n`);
  return LEASE_HELD_EXIT_CODE;
}

async function cleanCommand(config: CleanerConfig, driver: StorageDriver, log: Logger, lease?: HeldLease): Promise<number> {
  const plan = await planEviction(driver, { maxSize: config.maxSize, thresholdPercentage: config.thresholdPercentage, graceMs: config.grace });
  if (!config.dryRun) await afterPlan(driver, plan, log);
  process.stdout.write(`cached usage ${humanSize(plan.usage)} (hosted ${humanSize(plan.hosted)} not counted), limit ${humanSize(plan.limit)}, evicting above ${humanSize(plan.trigger)}\n`);
  if (plan.evict.length === 0) {
    process.stdout.write(plan.usage <= plan.trigger ? 'nothing to evict: usage is under the trigger\n' : `nothing evictable: ${humanSize(plan.pinned)} is within the grace period\n`);
    return 0;
  }
  for (const blob of plan.evict) process.stdout.write(`${config.dryRun ? 'would evict' : 'evict'} ${blob.digest.value} ${humanSize(blob.size)} (${blob.reason})\n`);
  if (!config.dryRun) {
    if (lease?.lost) {
      process.stderr.write('stevedore clean: the cleaner lease was lost (taken over after expiry); nothing evicted\n');
      return 1;
    }
    const freed = await applyEviction(driver, plan, log);
    await recordCleanerRun(config.root, { at: Date.now(), usageBefore: plan.usage, evictedBlobs: plan.evict.length, freedBytes: freed });
  }
  return 0;
}

/** `stevedore gc [--dry-run]`: mark-and-sweep of unreferenced blobs and stale uploads. */
export async function runGc(argv: readonly string[]): Promise<number> {
  const config = load('gc', argv);
  if (typeof config === 'number') return config;
  const log = createLogger('gc', config.logLevel);
  const driver = await openStore(config);
  const gc = (lease?: HeldLease) => collectGarbage(driver, { graceMs: config.grace, uploadTtlMs: config.uploadTtl, dryRun: config.dryRun, log, stillHeld: () => !lease?.lost });
  let result: Awaited<ReturnType<typeof gc>>;
  if (config.dryRun) result = await gc();
  else {
    const outcome = await withCleanerLease(driver, config, log, 'gc', gc);
    if (!outcome.ran) return refuseHeld('gc', outcome.heldBy);
    result = outcome.value;
  }
  for (const blob of result.removed) process.stdout.write(`${config.dryRun ? 'would remove' : 'removed'} ${blob.digest.value} ${humanSize(blob.size)} (unreferenced)\n`);
  process.stdout.write(`${config.dryRun ? 'would free' : 'freed'} ${humanSize(result.removedBytes)} in ${result.removed.length} blob(s); ${result.spared} unreferenced blob(s) spared (within the grace period)\n`);
  process.stdout.write(`${config.dryRun ? 'would remove' : 'removed'} ${result.staleUploads} idle upload session(s); ${config.dryRun ? 'would abort' : 'aborted'} ${result.abortedWrites} incomplete write(s)\n`);
  return 0;
}
