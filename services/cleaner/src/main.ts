import { ConfigError, loadCleanerConfig, storageLocationOf, type CleanerConfig } from '../../../lib/config.js';
import { createLogger, type Logger } from '../../../lib/log.js';
import { formatDuration } from '../../../lib/duration.js';
import { recordCleanerRun, type CleanerRun } from '../../../lib/storage/cleaner-runs.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { openConfiguredStorage } from '../../../lib/storage/driver/open.js';
import { applyEviction, humanSize, planEviction, type EvictionPlan } from '../../../lib/storage/eviction.js';
import { writeInventorySnapshot } from '../../../lib/storage/inventory-snapshot.js';
import { compactServedIndex } from '../../../lib/storage/served-index.js';
import { collectGarbage } from './gc.js';

function openStore(config: CleanerConfig): StorageDriver {
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

function load(command: string, argv: readonly string[]): CleanerConfig | number {
  try {
    return loadCleanerConfig(argv);
  } catch (err) {
    process.stderr.write(`stevedore ${command}: ${(err as Error).message}\n`);
    return err instanceof ConfigError ? 2 : 1;
  }
}

/** One run; what it did, for the console's chart (undefined for a dry run). */
async function cleanOnce(config: CleanerConfig, driver: StorageDriver, log: Logger): Promise<CleanerRun | undefined> {
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
  const freed = await applyEviction(driver, plan, log);
  return { at: Date.now(), usageBefore: plan.usage, evictedBlobs: plan.evict.length, freedBytes: freed };
}

/** `stevedore cleaner`: the PM2 service. Garbage collection at start-up, then an eviction run every CLEANER_RUNEVERY_TIME. */
export async function runCleanerService(argv: readonly string[]): Promise<number> {
  const config = load('cleaner', argv);
  if (typeof config === 'number') return config;
  const log = createLogger('cleaner', config.logLevel);
  const driver = openStore(config);
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
    // CLEANER_DRY_RUN holds for the service too: it then only logs what it would remove.
    await collectGarbage(driver, { graceMs: config.grace, uploadTtlMs: config.uploadTtl, dryRun: config.dryRun, log });
  } catch (err) {
    log.error({ err }, 'garbage collection failed');
  }
  while (!stopped) {
    try {
      const run = await cleanOnce(config, driver, log);
      if (run) await recordCleanerRun(config.root, run, Date.now() + config.runEvery);
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
  const driver = openStore(config);
  const plan = await planEviction(driver, { maxSize: config.maxSize, thresholdPercentage: config.thresholdPercentage, graceMs: config.grace });
  if (!config.dryRun) await afterPlan(driver, plan, log);
  process.stdout.write(`cached usage ${humanSize(plan.usage)} (hosted ${humanSize(plan.hosted)} not counted), limit ${humanSize(plan.limit)}, evicting above ${humanSize(plan.trigger)}\n`);
  if (plan.evict.length === 0) {
    process.stdout.write(plan.usage <= plan.trigger ? 'nothing to evict: usage is under the trigger\n' : `nothing evictable: ${humanSize(plan.pinned)} is within the grace period\n`);
    return 0;
  }
  for (const blob of plan.evict) process.stdout.write(`${config.dryRun ? 'would evict' : 'evict'} ${blob.digest.value} ${humanSize(blob.size)} (${blob.reason})\n`);
  if (!config.dryRun) {
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
  const result = await collectGarbage(openStore(config), { graceMs: config.grace, uploadTtlMs: config.uploadTtl, dryRun: config.dryRun, log });
  for (const blob of result.removed) process.stdout.write(`${config.dryRun ? 'would remove' : 'removed'} ${blob.digest.value} ${humanSize(blob.size)} (unreferenced)\n`);
  process.stdout.write(`${config.dryRun ? 'would free' : 'freed'} ${humanSize(result.removedBytes)} in ${result.removed.length} blob(s); ${result.spared} unreferenced blob(s) spared (within the grace period)\n`);
  process.stdout.write(`${config.dryRun ? 'would remove' : 'removed'} ${result.staleUploads} idle upload session(s); ${config.dryRun ? 'would abort' : 'aborted'} ${result.abortedWrites} incomplete write(s)\n`);
  return 0;
}
