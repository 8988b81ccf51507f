import type { Agent, IncomingMessage, ServerResponse } from 'node:http';
import type { AppliancePlan, WorkerPlan } from '../../../../lib/appliance.js';
import type { Logger } from '../../../../lib/log.js';
import { tryParseDigest } from '../../../../lib/oci/digest.js';
import { isValidName, isValidTag } from '../../../../lib/oci/reference.js';
import { readCleanerRuns } from '../../../../lib/storage/cleaner-runs.js';
import type { StorageDriver } from '../../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../../lib/storage/driver/filesystem.js';
import { planEviction, type EvictionPlan } from '../../../../lib/storage/eviction.js';
import { planOfSnapshot, readInventorySnapshot, writeInventorySnapshot } from '../../../../lib/storage/inventory-snapshot.js';
import type { AuthenticatedUser, UserDirectory } from '../auth.js';
import type { GatewayMetrics } from '../metrics.js';
import { deleteOnWorker, runEviction } from './actions.js';
import { ConsoleHistory } from './history.js';
import { checkCsrf, ConsoleError, intParam, loadAssets, paginate, sendJson, servePage, type Asset } from './http.js';
import { readCounters, storeChangeStamp, totalsOf } from './metrics-view.js';
import { largestCachedImages, readStoredLargest, storeLargest, type LargeImage } from './largest-images.js';
import { mostPulled, recentPulls } from './recent-pulls.js';
import { StoreView } from './store-view.js';
import { ReusedValue } from './reused-value.js';
import { pullReference, sourceLabels } from './sources.js';
import { readWorkerStatus, upstreamState } from './worker-status.js';

/** The cleaner settings the console shows and plans with (CLEANER_* as the cleaner reads them). */
export interface CleanerSettings {
  maxSize: number;
  thresholdPercentage: number;
  grace: number;
  runEvery: number;
}

export interface ConsoleOptions {
  root: string;
  /** The store (lib/storage driver); default: the filesystem store at `root`. */
  storage?: StorageDriver;
  plan: AppliancePlan;
  log: Logger;
  /** Undefined: no authentication (everyone is an admin, as on the registry). */
  users: UserDirectory | undefined;
  realm: string;
  metrics: GatewayMetrics;
  accessLogPath: string;
  cleaner: CleanerSettings;
  tls: boolean;
  /** The gateway's pooled agent to the workers' sockets. */
  agent: Agent;
  /** A write reached a worker: what the gateway cached of the repository is stale. */
  invalidate(worker: WorkerPlan, repository: string): void;
}

/** Console paths the gateway hands to the console instead of routing them as registry requests. */
export function isConsolePath(path: string): boolean {
  return path === '/' || path === '/ui' || path.startsWith('/ui/') || path === '/api/v1' || path.startsWith('/api/v1/');
}

/**
 * Storage is re-measured (a walk of the blob store: ~100 ms for 2,000 blobs, seconds for 100,000)
 * at least every STORAGE_MAX_AGE_MS for the overview and history, and at most every
 * STORE_RECHECK_MS while the gateway fills, pushes or deletes; both grow with the walk's cost
 * (WALK_COST_FACTOR × its duration) so that a large store is not walked more than ~5% of the time.
 */
const STORAGE_MAX_AGE_MS = 60_000;
const STORE_RECHECK_MS = 2_000;
/** A plan started this long after the last change was seen covers that change's commit. */
const SETTLE_MS = 1_000;
const WALK_COST_FACTOR = 20;
/** How long the top-images rankings are reused. */
const RANKING_MAX_AGE_MS = 30_000;


/**
 * The web console: the page (`/`, `/ui/…`) and its JSON API (`/api/v1/…`), behind the registry's
 * users. Reads go through lib/storage and the gateway's own metrics; admin actions go through the
 * same paths as the registry API (a DELETE sent to the worker) and the cleaner's own code.
 */
export class WebConsole {
  private readonly assets: Map<string, Asset>;
  private readonly store: StoreView;
  private readonly history: ConsoleHistory;
  private measured: { at: number; stamp: number; settled: boolean; walked?: boolean; plan: Promise<EvictionPlan> } | undefined;
  /** The change stamp last passed in, and when it was first seen (see evictionPlan's `settled`). */
  private stampSeen = { stamp: Number.NaN, at: 0 };
  private readonly ranking: ReusedValue<Awaited<ReturnType<typeof mostPulled>>>;
  private readonly largest: ReusedValue<LargeImage[]>;
  /** How long the last walk took. */
  private walkMs = 0;
  private cleaning: Promise<unknown> | undefined;
  private readonly driver: StorageDriver;
  /** The ranking stored by the last console that computed one, shown until this one has its own. */
  private readonly storedLargest: Promise<LargeImage[] | undefined>;
  private largestComputed = false;
  /** Whether a plan was ever made (the stored snapshot stands in only for the first). */
  private planned = false;
  private readonly challenge: string;
  /** Upstream error counters a minute apart (the last six): an upstream is failing if its count rose within them. */
  private readonly errorSnapshots: Array<Map<string, number>> = [];
  private readonly snapshotTimer: NodeJS.Timeout;

  constructor(private readonly options: ConsoleOptions) {
    this.assets = loadAssets(options.log);
    this.driver = options.storage ?? new FilesystemDriver(options.root);
    this.store = new StoreView(options.root, options.plan, this.driver);
    this.ranking = new ReusedValue(() => mostPulled(options.accessLogPath, 100), RANKING_MAX_AGE_MS);
    this.largest = new ReusedValue(async () => {
      const rows = await largestCachedImages(this.store, 100);
      this.largestComputed = true;
      void storeLargest(this.driver, rows).catch((err: unknown) => options.log.warn({ err }, 'console: largest-images snapshot not written'));
      return rows;
    }, RANKING_MAX_AGE_MS);
    this.storedLargest = readStoredLargest(this.driver).catch(() => undefined);
    this.challenge = `Basic realm="${options.realm}"`;
    this.history = new ConsoleHistory(options.root, async () => totalsOf(await readCounters(options.metrics)), async () => {
      const plan = await this.evictionPlan(STORAGE_MAX_AGE_MS, storeChangeStamp(await readCounters(options.metrics)));
      return { cached: plan.usage, hosted: plan.hosted };
    });
    this.history.start((err) => options.log.warn({ err }, 'console: history sample failed'));
    const snapshot = () => {
      void readCounters(options.metrics).then((counters) => {
        this.errorSnapshots.push(new Map([...counters].map(([upstream, c]) => [upstream, c.upstreamErrors])));
        if (this.errorSnapshots.length > 6) this.errorSnapshots.shift();
      });
    };
    snapshot();
    this.snapshotTimer = setInterval(snapshot, 60_000);
    this.snapshotTimer.unref();
  }

  close(): void {
    this.history.stop();
    clearInterval(this.snapshotTimer);
  }

  /**
   * The cleaner's plan (one walk of the blob store, which also measures storage), reused for up to
   * `maxAgeMs`, or up to STORE_RECHECK_MS once the gateway has seen a fill, push or delete since
   * (`stamp`); concurrent callers share a walk; `maxAgeMs` 0 walks now. The cleaner's own
   * evictions show within `maxAgeMs`.
   */
  private evictionPlan(maxAgeMs: number, stamp = this.measured?.stamp ?? 0): Promise<EvictionPlan> {
    const now = Date.now();
    if (stamp !== this.stampSeen.stamp) this.stampSeen = { stamp, at: now };
    const age = this.measured ? now - this.measured.at : Infinity;
    const cost = this.walkMs * WALK_COST_FACTOR;
    // A walk made right after a change may have run while that fill was still being committed (its
    // client has the last byte, and so the metrics counted it, before the rename): such an unsettled
    // plan is not reused once it is done; the next caller walks again.
    const unsettled = this.measured?.walked === true && !this.measured.settled && age > cost;
    if (!this.measured || maxAgeMs === 0 || unsettled || age > Math.max(maxAgeMs, cost) || (stamp !== this.measured.stamp && age > Math.max(STORE_RECHECK_MS, cost))) {
      // Only the console's very first plan: after an eviction or delete dropped it, the listing is awaited.
      const first = !this.measured && !this.planned;
      this.planned = true;
      const { cleaner } = this.options;
      const started = Date.now();
      const plan = planEviction(this.driver, { maxSize: cleaner.maxSize, thresholdPercentage: cleaner.thresholdPercentage, graceMs: cleaner.grace });
      void plan.then((made) => {
        this.walkMs = Date.now() - started;
        entry.walked = true;
        // Kept in the store: the next console start (on any appliance) shows it at once.
        writeInventorySnapshot(this.driver, made, started).catch((err: unknown) => this.options.log.warn({ err }, 'console: inventory snapshot not written'));
      }, () => {});
      const entry: NonNullable<WebConsole['measured']> = { at: now, stamp, settled: now - this.stampSeen.at >= SETTLE_MS, plan };
      this.measured = entry;
      plan.catch(() => { if (this.measured === entry) this.measured = undefined; });
      if (first && maxAgeMs !== 0) {
        // The first overview does not wait for a listing of the whole store: the last stored
        // snapshot (the cleaner's or a console's) answers while the listing runs.
        const shown = { at: entry.at, stamp, settled: entry.settled, plan: readInventorySnapshot(this.driver).then((snapshot) => (snapshot ? planOfSnapshot(snapshot) : plan), () => plan) };
        this.measured = shown;
        void plan.then(() => { if (this.measured === shown) this.measured = entry; }, () => { if (this.measured === shown) this.measured = undefined; });
      }
    }
    return this.measured!.plan;
  }

  async handle(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    try {
      const user = await this.authenticate(req);
      if (path.startsWith('/api/')) {
        await this.api(req, res, path, user);
        return;
      }
      servePage(this.assets, req, res, path);
    } catch (err) {
      if (err instanceof ConsoleError) return sendJson(res, err.status, { error: { code: err.code, message: err.message } }, err.headers);
      this.options.log.error({ err, path }, 'console request failed');
      sendJson(res, 500, { error: { code: 'INTERNAL', message: 'internal server error' } });
    }
  }

  private async authenticate(req: IncomingMessage): Promise<AuthenticatedUser> {
    const { users } = this.options;
    if (!users) return { name: '-', admin: true };
    const checked = users.authenticate(req.headers.authorization);
    const user = checked instanceof Promise ? await checked : checked;
    if (!user) throw new ConsoleError(401, 'UNAUTHORIZED', req.headers.authorization ? 'invalid username or password' : 'authentication required', { 'www-authenticate': this.challenge });
    return user;
  }



  private requireAdmin(user: AuthenticatedUser, action: string): void {
    if (!user.admin) throw new ConsoleError(403, 'DENIED', `user ${user.name} is read-only: ${action} needs an admin`);
  }

  private async api(req: IncomingMessage, res: ServerResponse, path: string, user: AuthenticatedUser): Promise<void> {
    const query = new URL(req.url ?? '/', 'http://console').searchParams;
    const route = `${req.method} ${path}`;
    switch (route) {
      case 'GET /api/v1/me':
        return sendJson(res, 200, { user: user.name, admin: user.admin, auth: Boolean(this.options.users) });
      case 'GET /api/v1/sources':
        return sendJson(res, 200, { items: sourceLabels(this.options.plan) });
      case 'GET /api/v1/overview':
        return sendJson(res, 200, await this.overview(user));
      case 'GET /api/v1/history': {
        const since = intParam(query, 'since', 0, 0, Number.MAX_SAFE_INTEGER);
        const [points, cleaner] = await Promise.all([this.history.series(since), readCleanerRuns(this.options.root)]);
        return sendJson(res, 200, {
          columns: ['time', 'hits', 'misses', 'bytesFromCache', 'bytesFetched', 'upstreamErrors', 'cachedBytes', 'hostedBytes'],
          points, limitBytes: this.options.cleaner.maxSize, triggerBytes: this.trigger(),
          cleanerRuns: cleaner.runs.filter((r) => r.at >= since),
        });
      }
      case 'GET /api/v1/repositories': {
        const q = (query.get('q') ?? '').toLowerCase();
        const source = query.get('source');
        const rows = (await this.store.repositories()).filter((r) => (!source || r.source === source) && (!q || `${r.source}/${r.name}`.toLowerCase().includes(q)));
        return sendJson(res, 200, { ...paginate(rows, query), sources: this.store.sourceNames() });
      }
      case 'GET /api/v1/tags': {
        const { source, repository } = this.repositoryParams(query);
        const names = await this.store.tagNames(source, repository);
        if (!names) throw new ConsoleError(404, 'NOT_FOUND', `no repository ${repository} in ${source}`);
        const page = paginate(names, query);
        const rows = await Promise.all(page.items.map((tag) => this.store.tag(source, repository, tag)));
        return sendJson(res, 200, { ...page, source, repository, pull: pullReference(this.store.workerOf(source)!, repository), items: rows.filter(Boolean) });
      }
      case 'GET /api/v1/image': {
        const { source, repository } = this.repositoryParams(query);
        const image = await this.store.image(source, repository, query.get('digest') ?? '');
        if (!image) throw new ConsoleError(404, 'NOT_FOUND', `no manifest ${query.get('digest')} in ${source}/${repository}`);
        return sendJson(res, 200, image);
      }
      case 'GET /api/v1/evictions': {
        // fresh=1: planned now, as `stevedore clean --dry-run` would print it (a walk of the store);
        // otherwise the overview's plan (see evictionPlan), with the time it was made.
        const fresh = query.get('fresh') === '1';
        const plan = await (fresh ? this.evictionPlan(0) : this.evictionPlan(STORAGE_MAX_AGE_MS, storeChangeStamp(await readCounters(this.options.metrics))));
        const page = paginate(plan.evict, query);
        return sendJson(res, 200, {
          ...page, items: page.items.map((b) => ({ digest: b.digest.value, size: b.size, lastServed: new Date(b.lastServedMs).toISOString(), reason: b.reason })),
          usageBytes: plan.usage, limitBytes: plan.limit, triggerBytes: plan.trigger, pinnedBytes: plan.pinned, hostedBytes: plan.hosted,
          evictBytes: plan.evict.reduce((sum, b) => sum + b.size, 0), plannedAt: new Date(this.measured?.at ?? Date.now()).toISOString(),
        });
      }
      case 'GET /api/v1/pulls': {
        const entries = await recentPulls(this.options.accessLogPath, {
          limit: intParam(query, 'limit', 100, 1, 1000), contentOnly: query.get('all') !== '1',
          ...(query.get('q') ? { q: query.get('q')! } : {}), ...(query.get('user') ? { user: query.get('user')! } : {}),
          ...(query.get('upstream') ? { upstream: query.get('upstream')! } : {}), ...(query.get('status') ? { status: query.get('status')! } : {}),
        });
        return sendJson(res, 200, { items: entries.map(({ time, user: who, method, upstream, repository, reference, kind, status, bytes, durationMs }) => ({ time, user: who, method, upstream, repository, reference, kind, status, bytes, durationMs })) });
      }
      case 'GET /api/v1/top': {
        const limit = intParam(query, 'limit', 10, 1, 100);
        // The rankings read megabytes of log and every cached tag: reused, renewed in the background.
        const [pulled, largest] = await Promise.all([this.ranking.get(), this.largestImages()]);
        return sendJson(res, 200, { since: pulled.since ?? null, mostPulled: pulled.items.slice(0, limit), largestCached: largest.slice(0, limit) });
      }
      case 'DELETE /api/v1/manifests':
        checkCsrf(req, this.options.tls);
        this.requireAdmin(user, 'deleting a tag or manifest');
        return sendJson(res, 200, await this.deleteManifest(user, query));
      case 'POST /api/v1/cleaner/run':
        checkCsrf(req, this.options.tls);
        this.requireAdmin(user, 'running the cleaner');
        return sendJson(res, 200, await this.runCleaner(user));
      default:
        throw new ConsoleError(404, 'NOT_FOUND', `no API endpoint ${route}`);
    }
  }

  /** The largest cached images: this console's ranking once it has one, the stored one meanwhile. */
  private async largestImages(): Promise<LargeImage[]> {
    const computing = this.largest.get();
    if (!this.largestComputed) {
      const stored = await this.storedLargest;
      if (stored && !this.largestComputed) return stored;
    }
    return computing;
  }

  private trigger(): number {
    return Math.floor(this.options.cleaner.maxSize * (1 + this.options.cleaner.thresholdPercentage / 100));
  }

  private repositoryParams(query: URLSearchParams): { source: string; repository: string } {
    const source = query.get('source') ?? '';
    const repository = query.get('repository') ?? '';
    if (!this.store.workerOf(source)) throw new ConsoleError(400, 'BAD_REQUEST', `source must be one of ${this.store.sourceNames().join(', ')}`);
    if (!isValidName(repository)) throw new ConsoleError(400, 'BAD_REQUEST', 'repository is not a valid repository name');
    return { source, repository };
  }

  private async overview(user: AuthenticatedUser): Promise<unknown> {
    const { plan, cleaner, root } = this.options;
    const counters = await readCounters(this.options.metrics);
    const [storage, runs, health] = await Promise.all([
      this.evictionPlan(STORAGE_MAX_AGE_MS, storeChangeStamp(counters)), readCleanerRuns(root),
      Promise.all([plan.hosted, ...plan.proxies].map((w) => readWorkerStatus(w, this.options.agent))),
    ]);
    const oldest = this.errorSnapshots[0];
    const workers = [plan.hosted, ...plan.proxies];
    const upstreams = workers.map((worker, i) => {
      const key = worker.upstream ?? '-';
      const c = counters.get(key) ?? { requests: 0, bytesServed: 0, hits: 0, misses: 0, bytesFromCache: 0, bytesFetched: 0, upstreamErrors: 0, writes: 0 };
      const lookups = c.hits + c.misses;
      // Errors the gateway answered for this upstream within the last five to six minutes.
      const recentErrors = c.upstreamErrors - (oldest?.get(key) ?? 0);
      const status = health[i];
      return {
        upstream: key, worker: worker.name, kind: worker.kind, prefixes: worker.prefixes,
        state: upstreamState(status), recentErrors, ...c, hitRatio: lookups ? c.hits / lookups : null,
        consecutiveFailures: status?.consecutiveFailures ?? null, lastError: status?.lastError ?? null, lastSuccessAt: status?.lastSuccessAt ?? null, rateLimit: status?.rateLimit ?? null,
      };
    });
    const last = runs.runs.at(-1);
    return {
      user: { name: user.name, admin: user.admin },
      storage: {
        cachedBytes: storage.usage, hostedBytes: storage.hosted, pinnedBytes: storage.pinned, limitBytes: storage.limit, triggerBytes: storage.trigger,
        measuredAt: new Date(this.measured?.at ?? Date.now()).toISOString(), evictableBlobs: storage.evict.length, evictableBytes: storage.evict.reduce((sum, b) => sum + b.size, 0),
      },
      cleaner: {
        runEveryMs: cleaner.runEvery, graceMs: cleaner.grace, thresholdPercentage: cleaner.thresholdPercentage,
        lastRunAt: last ? new Date(last.at).toISOString() : null, lastRun: last ?? null,
        nextRunAt: runs.nextRunAt ? new Date(runs.nextRunAt).toISOString() : null,
      },
      upstreams,
    };
  }

  /** DELETE /v2/<repository>/manifests/<reference> sent to the source's worker, as a client's DELETE through the gateway would be. */
  private async deleteManifest(user: AuthenticatedUser, query: URLSearchParams): Promise<unknown> {
    const { source, repository } = this.repositoryParams(query);
    const reference = query.get('reference') ?? '';
    if (!tryParseDigest(reference) && !isValidTag(reference)) throw new ConsoleError(400, 'BAD_REQUEST', 'reference must be a tag or a digest');
    const worker = this.store.workerOf(source)!;
    try {
      await deleteOnWorker(worker, this.options.agent, repository, reference);
    } finally {
      // Whatever the worker answered, it may have changed the store.
      this.options.invalidate(worker, repository);
      this.store.forget();
      this.largest.forget();
    }
    this.options.log.info({ user: user.name, source, repository, reference }, source === 'hosted' ? 'console: deleted from the hosted registry' : 'console: purged from the cache');
    return { deleted: { source, repository, reference } };
  }

  /** One eviction run now, with the cleaner's own code; one at a time. */
  private async runCleaner(user: AuthenticatedUser): Promise<unknown> {
    if (this.cleaning) throw new ConsoleError(409, 'BUSY', 'a cleaner run started from the console is still going');
    const run = runEviction(this.options.root, this.driver, this.options.cleaner, this.options.log, user.name);
    this.cleaning = run;
    try {
      return { run: await run };
    } finally {
      this.cleaning = undefined;
      this.measured = undefined;
      this.store.forget();
      this.largest.forget();
    }
  }
}
