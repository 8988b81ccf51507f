import { request as httpRequest, type Agent } from 'node:http';
import type { WorkerPlan } from '../../../../lib/appliance.js';
import type { Logger } from '../../../../lib/log.js';
import { recordCleanerRun, type CleanerRun } from '../../../../lib/storage/cleaner-runs.js';
import type { StorageDriver } from '../../../../lib/storage/driver/driver.js';
import { applyEviction, planEviction } from '../../../../lib/storage/eviction.js';
import type { CleanerSettings } from './console.js';
import { ConsoleError } from './http.js';

/** The console's admin actions, through the same code as the registry API and the cleaner. */

/**
 * DELETE /v2/<repository>/manifests/<reference> sent to the worker, as a client's DELETE through
 * the gateway would be (hosted: deletes the tag or manifest; cache: purges). Registry errors become
 * console errors with the registry's own message.
 */
export async function deleteOnWorker(worker: WorkerPlan, agent: Agent, repository: string, reference: string): Promise<void> {
  const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const sent = httpRequest({ socketPath: worker.socketPath, path: `/v2/${repository}/manifests/${reference}`, method: 'DELETE', agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    sent.on('error', () => reject(new ConsoleError(503, 'UNAVAILABLE', `the registry worker ${worker.name} is not running (it may be restarting); retry shortly`)));
    sent.end();
  });
  if (answer.status < 300) return;
  let message = `the registry answered ${answer.status}`;
  try {
    const first = (JSON.parse(answer.body) as { errors?: Array<{ code: string; message: string }> }).errors?.[0];
    if (first) message = `${first.code}: ${first.message}`;
  } catch { /* not OCI JSON */ }
  throw new ConsoleError(answer.status === 404 ? 404 : answer.status >= 500 ? 502 : answer.status, 'REGISTRY', message);
}

/** One eviction run with the cleaner's own code, recorded for the chart like the cleaner's runs. */
export async function runEviction(root: string, driver: StorageDriver, cleaner: CleanerSettings, log: Logger, userName: string): Promise<CleanerRun> {
  const plan = await planEviction(driver, { maxSize: cleaner.maxSize, thresholdPercentage: cleaner.thresholdPercentage, graceMs: cleaner.grace });
  const freed = plan.evict.length ? await applyEviction(driver, plan, log) : 0;
  const record = { at: Date.now(), usageBefore: plan.usage, evictedBlobs: plan.evict.length, freedBytes: freed };
  await recordCleanerRun(root, record);
  log.info({ user: userName, ...record }, 'console: cleaner run');
  return record;
}
