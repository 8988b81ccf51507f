import { Agent, request as httpRequest, createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { Duplex } from 'node:stream';
import { timingSafeEqual } from 'node:crypto';
import { CACHE_RESULT_HEADER, FILL_SPOOL_HEADER, PEER_FILL_HEADER, PEER_TOKEN_HEADER, type AppliancePlan, type WorkerPlan } from '../../../lib/appliance.js';
import type { Logger } from '../../../lib/log.js';
import { RegistryError, isRegistryError } from '../../../lib/oci/errors.js';
import type { AccessLogWriter } from './access-log.js';
import { DirectBlobs } from './blob-direct.js';
import { tryParseDigest } from '../../../lib/oci/digest.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../lib/storage/driver/filesystem.js';
import type { RemoteBlobSettings } from '../../../lib/storage/remote-blob-source.js';
import { DirectManifests } from './manifest-direct.js';
import type { AuthenticatedUser, UserDirectory } from './auth.js';
import type { GatewayMetrics } from './metrics.js';
import { isConsolePath, WebConsole, type CleanerSettings } from './console/console.js';
import { addPrefix, prefixIndex, routeRequest } from './router.js';
import { sendError } from './send-error.js';
import { readForwardBody, WorkerForwarder } from './worker-forward.js';
import { raiseHighWaterMark, sendFileResponse } from '../../../lib/http/file-response.js';
import { openFillSpool, relayWorkerAnswer } from './fill-spool.js';
import { FillFollowers } from './fill-followers.js';

export interface GatewayOptions {
  plan: AppliancePlan;
  log: Logger;
  /** Undefined: no authentication (every client may read and write). */
  users: UserDirectory | undefined;
  realm: string;
  accessLog: AccessLogWriter;
  metrics: GatewayMetrics;
  tls?: { cert: string | Buffer; key: string | Buffer };
  /**
   * The appliance's data root (STEVEDORE_ROOT): blobs and manifests already stored there are sent
   * from disk by the gateway itself (blob-direct.ts, manifest-direct.ts). Without it every request
   * goes to a worker.
   */
  root?: string;
  /**
   * The store when it is not the filesystem directory `root` (--storage): the direct answers and the
   * console read through it. Default: the filesystem store at `root`.
   */
  storage?: StorageDriver;
  /** Other appliances write to the store too (lib/config.ts isSharedStore): tags, revisions and links are read per request. */
  sharedStore?: boolean;
  /** STEVEDORE_S3_REDIRECT and the local read cache, for a store that is not a directory. */
  remoteBlobs?: RemoteBlobSettings;
  /** The cache workers' tag TTL (STEVEDORE_TAG_TTL): how long the gateway may answer a cached tag itself. */
  tagTtlMs?: number;
  /** How long a request waits for a worker that is starting or restarting (STEVEDORE_WORKER_WAIT; default 10 s). */
  workerWaitMs?: number;
  /**
   * STEVEDORE_PEER_TOKEN: requests carrying it (PEER_TOKEN_HEADER) are other appliances on the store
   * streaming a cache fill from this one; they may GET/HEAD cache blobs, nothing else.
   */
  peerToken?: string;
  /** The web console (`/`, `/ui/`, `/api/v1/`; needs `root`); without it those paths are registry 404s. */
  console?: { accessLogPath: string; cleaner: CleanerSettings };
}

const READ_METHODS = new Set(['GET', 'HEAD']);
/** The methods of the distribution API; anything else (TRACE, OPTIONS, ...) is 405. */
const API_METHODS = new Set(['GET', 'HEAD', 'PUT', 'POST', 'PATCH', 'DELETE']);
/**
 * How long an idle client connection stays open. Go clients (containerd, podman, skopeo) keep idle
 * connections for 90 s and ignore the Keep-Alive header; closing sooner (Node's default is 5 s) makes
 * them reuse connections the gateway is closing. distribution never closes idle connections.
 */
const KEEP_ALIVE_MS = 120_000;
const KEEP_ALIVE_HEADER = `timeout=${KEEP_ALIVE_MS / 1000}`;
/**
 * Client sockets buffer up to 1 MiB each way: big proxied answers are written a whole event-loop
 * turn of worker reads at a time (write-coalescing.ts), which Node's 16 KiB default would turn
 * into a backpressure pause per chunk; uploads are read ahead further before the client is paused.
 */
const CLIENT_SOCKET_HIGH_WATER_MARK = 1024 * 1024;

/**
 * The appliance's only way in: authenticates users, routes `/v2/` requests to the registry workers
 * (unix sockets), rewrites Location/Link headers back under the client's upstream prefix, writes
 * the access log and metrics, answers /healthz and /metrics, and 503 while a worker restarts.
 */
export function createGateway(options: GatewayOptions): Server {
  const { plan, log, users, realm, accessLog, metrics } = options;
  const byPrefix = prefixIndex(plan);
  // Every 401 leaving the gateway names how to authenticate (RFC 9110), its own (bad credentials, a
  // wrong peer token) and a worker's (an upstream that refused the configured credentials) alike.
  const challenge = `Basic realm="${realm}"`;
  const challengeHeaders = { 'www-authenticate': challenge };
  const storage = options.storage ?? (options.root ? new FilesystemDriver(options.root) : undefined);
  const directBlobs = storage ? new DirectBlobs(storage, plan, options.remoteBlobs, options.sharedStore) : undefined;
  const fillFollowers = new FillFollowers();
  const directManifests = storage ? new DirectManifests(storage, plan, options.tagTtlMs ?? 0, options.sharedStore) : undefined;

  /** A write (manifest push, tag, delete; blob delete) reached a worker: what the gateway cached of the repository is stale. */
  function forgetAfterWrite(req: IncomingMessage, ctx: GatewayContext): void {
    if (ctx.resource === 'manifest' && ctx.repository && ctx.worker && !READ_METHODS.has(req.method ?? '')) directManifests?.invalidate(ctx.worker, ctx.repository);
    if (ctx.resource === 'blob' && ctx.repository && ctx.worker && !READ_METHODS.has(req.method ?? '')) directBlobs?.invalidate(ctx.worker, ctx.repository);
  }

  const forwarder = new WorkerForwarder({
    log,
    workers: [plan.hosted, ...plan.proxies],
    workerWaitMs: options.workerWaitMs ?? 10_000,
    onResponse(proxyRes, req) {
      const ctx = (req as GatewayRequest).gateway;
      if (!ctx) return;
      if (ctx.worker) forwarder.availability.markUp(ctx.worker);
      const prefix = ctx.prefix;
      if (prefix) {
        if (typeof proxyRes.headers.location === 'string') proxyRes.headers.location = addPrefix(proxyRes.headers.location, prefix);
        if (typeof proxyRes.headers.link === 'string') proxyRes.headers.link = addPrefix(proxyRes.headers.link, prefix);
      }
      // The worker's keep-alive terms are for the gateway's own pooled connection to it; the client
      // is told the gateway's.
      if (proxyRes.headers['keep-alive'] !== undefined) proxyRes.headers['keep-alive'] = KEEP_ALIVE_HEADER;
      if (proxyRes.statusCode === 401) proxyRes.headers['www-authenticate'] ??= challenge;
      const cache = proxyRes.headers[CACHE_RESULT_HEADER];
      if (typeof cache === 'string') {
        metrics.cache.inc({ upstream: ctx.upstream, result: cache });
        ctx.cacheResult = cache;
        delete proxyRes.headers[CACHE_RESULT_HEADER];
      }
      forgetAfterWrite(req, ctx);
      proxyRes.on('data', (chunk: Buffer) => { ctx.bytes += chunk.length; });
    },
    onForwarded(req) {
      // The worker may have written before it failed.
      const ctx = (req as GatewayRequest).gateway;
      if (ctx) forgetAfterWrite(req, ctx);
    },
  });
  const agent = forwarder.pool;

  const webConsole = options.console && options.root ? new WebConsole({
    ...options.console, root: options.root, ...(options.storage ? { storage: options.storage } : {}), plan, log, users, realm, metrics, tls: Boolean(options.tls), agent,
    invalidate: (worker, repository) => directManifests?.invalidate(worker, repository),
  }) : undefined;

  async function health(res: ServerResponse): Promise<void> {
    const workers = [plan.hosted, ...plan.proxies];
    const results = await Promise.all(workers.map((w) => probe(w, agent)));
    const status: Record<string, string> = {};
    workers.forEach((w, i) => { status[w.name] = results[i] ? 'ok' : 'down'; });
    const ok = results.every(Boolean);
    const body = JSON.stringify({ status: ok ? 'ok' : 'degraded', gateway: 'ok', workers: status });
    res.writeHead(ok ? 200 : 503, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  }

  async function handle(req: GatewayRequest, res: ServerResponse): Promise<void> {
    const started = process.hrtime.bigint();
    // RFC 9112 §3.2.2: a server MUST accept the absolute form (`GET http://host/v2/ HTTP/1.1`).
    const url = originForm(req.url ?? '/');
    const path = url.split('?', 1)[0]!;
    if (path === '/healthz') return health(res);
    if (path === '/metrics') {
      const body = await metrics.registry.metrics();
      res.writeHead(200, { 'content-type': metrics.registry.contentType });
      res.end(body);
      return;
    }
    // The console authenticates with the same users itself; its requests are not registry traffic (no access log or registry metrics).
    if (webConsole && isConsolePath(path)) return webConsole.handle(req, res, path);
    const ctx: GatewayContext = { user: '-', upstream: '-', worker: undefined, prefix: undefined, bytes: 0, repository: undefined, reference: undefined, resource: 'other' };
    req.gateway = ctx;
    res.once('close', () => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const status = res.statusCode;
      accessLog.write({
        user: ctx.user, method: req.method ?? '-', path, upstream: ctx.upstream,
        ...(ctx.repository ? { repository: ctx.repository } : {}), ...(ctx.reference ? { reference: ctx.reference } : {}),
        kind: ctx.resource, status, bytes: ctx.bytes, durationMs: Math.round(durationMs * 1000) / 1000,
      });
      metrics.requests.inc({ upstream: ctx.upstream, method: req.method ?? '-', status: String(status) });
      metrics.bytes.inc({ upstream: ctx.upstream }, ctx.bytes);
      if (ctx.cacheResult) metrics.cacheBytes.inc({ upstream: ctx.upstream, result: ctx.cacheResult }, ctx.bytes);
      if (ctx.upstream !== '-' && status >= 502 && status <= 504) metrics.upstreamErrors.inc({ upstream: ctx.upstream });
    });
    // Only the gateway says a request is a peer's.
    delete req.headers[PEER_FILL_HEADER];
    delete req.headers[FILL_SPOOL_HEADER];
    try {
      const peer = isPeerRequest(req);
      if (peer) ctx.user = 'peer';
      let user: AuthenticatedUser | undefined;
      if (users && !peer) {
        const checked = users.authenticate(req.headers.authorization);
        user = checked instanceof Promise ? await checked : checked;
        if (!user) {
          throw new RegistryError('UNAUTHORIZED', undefined, {
            message: req.headers.authorization ? 'invalid username or password' : 'authentication required',
          });
        }
        ctx.user = user.name;
      }
      if (!API_METHODS.has(req.method ?? '')) {
        throw new RegistryError('UNSUPPORTED', { method: req.method }, { message: `method ${req.method} is not supported by the registry API`, headers: { allow: 'GET, HEAD, PUT, POST, PATCH, DELETE' } });
      }
      const route = routeRequest(url, plan, byPrefix);
      if (route.kind === 'ping') {
        const body = '{}';
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': 2, 'docker-distribution-api-version': 'registry/2.0' });
        res.end(req.method === 'HEAD' ? undefined : body);
        return;
      }
      ctx.worker = route.worker;
      ctx.upstream = route.worker.upstream ?? '-';
      ctx.prefix = route.prefix;
      ctx.repository = route.repository;
      ctx.reference = route.reference;
      ctx.resource = route.resource;
      if (peer) {
        if (!READ_METHODS.has(req.method ?? '') || route.resource !== 'blob' || route.worker.kind !== 'proxy') {
          throw new RegistryError('DENIED', { method: req.method }, { message: 'peer requests may only read cache blobs' });
        }
        req.headers[PEER_FILL_HEADER] = '1';
      }
      if (users && user && !user.admin && (!READ_METHODS.has(req.method ?? '') || route.resource === 'upload')) {
        throw new RegistryError('DENIED', { user: user.name, method: req.method }, {
          message: route.resource === 'upload' ? `user ${user.name} is read-only: upload sessions are for pushing` : `user ${user.name} is read-only: only GET and HEAD are allowed`,
        });
      }
      if (directManifests && route.resource === 'manifest' && READ_METHODS.has(req.method ?? '') && route.repository && route.reference) {
        const answer = directManifests.answer({ worker: route.worker, repository: route.repository, reference: route.reference, method: req.method!, headers: req.headers, url: route.url });
        const manifest = answer instanceof Promise ? await answer : answer;
        if (manifest) {
          if (route.worker.kind === 'proxy') {
            metrics.cache.inc({ upstream: ctx.upstream, result: 'hit' });
            ctx.cacheResult = 'hit';
          }
          ctx.bytes = manifest.body?.length ?? 0;
          res.writeHead(manifest.status, manifest.headers);
          res.end(manifest.body);
          return;
        }
      }
      if (directBlobs && route.resource === 'blob' && req.method === 'GET' && route.repository && route.reference) {
        const { worker, repository, reference } = route;
        const prepare = () => directBlobs.prepare(worker, repository, reference, req.headers, route.url);
        const prepared = prepare();
        let blob = prepared instanceof Promise ? await prepared : prepared;
        // Not stored yet: a later client of a blob being fetched is served from the store once it is there.
        const digest = !peer && worker.kind === 'proxy' ? tryParseDigest(reference) : undefined;
        if (!blob && digest) blob = await fillFollowers.follow(`${worker.name}\0${reference}`, res, prepare);
        if (res.destroyed) return blob && directBlobs.discard(blob);
        const counted = (bytes: number) => { ctx.bytes += bytes; };
        /** Sends a blob the gateway answers itself; `cacheResult`: what the cache worker would have reported. */
        const sendDirect = async (send: (sent: (bytes: number) => void) => Promise<Error | undefined> | undefined, cacheResult: 'hit' | 'miss' | undefined) => {
          if (cacheResult) {
            metrics.cache.inc({ upstream: ctx.upstream, result: cacheResult });
            ctx.cacheResult = cacheResult;
          }
          const sending = send(counted);
          const failure = sending && await sending;
          if (failure) log.warn({ err: failure, repository, digest: reference }, 'blob transfer failed');
        };
        // Still not stored: the cache worker fetches it, and the gateway sends it from the worker's spool.
        if (!blob && digest && !options.sharedStore) {
          const spool = await openFillSpool(forwarder.pool, worker, route.url, digest, req.headers.range);
          if (spool.kind === 'answer') return relayWorkerAnswer(spool.response, res, counted);
          if (spool.kind === 'spool') {
            try {
              return await sendDirect((sent) => sendFileResponse(spool.file, res, sent), 'miss');
            } finally {
              spool.close();
            }
          }
        }
        // What the worker would answer, without the second hop; a cache worker would report a hit.
        if (blob) return sendDirect((sent) => directBlobs.send(blob, res, sent), worker.kind === 'proxy' ? 'hit' : undefined);
      }
      req.url = route.url;
      // Workers trust the gateway; the client's credentials go no further.
      delete req.headers.authorization;
      const body = await readForwardBody(req);
      if (!body) return; // the client went away while sending
      await forwarder.forward(req, res, route.worker, body);
    } catch (err) {
      if (isRegistryError(err)) return sendError(res, err, err.status === 401 ? challengeHeaders : {});
      log.error({ err }, 'gateway request failed');
      sendError(res, new RegistryError('UNKNOWN', undefined, { message: 'internal server error' }));
    }
  }

  const peerToken = options.peerToken === undefined ? undefined : Buffer.from(options.peerToken);
  /** Whether the request is another appliance's (the right token); a wrong token is UNAUTHORIZED. */
  function isPeerRequest(req: IncomingMessage): boolean {
    const presented = req.headers[PEER_TOKEN_HEADER];
    if (presented === undefined) return false;
    delete req.headers[PEER_TOKEN_HEADER];
    const given = Buffer.from(Array.isArray(presented) ? presented.join(',') : presented);
    if (!peerToken || given.length !== peerToken.length || !timingSafeEqual(given, peerToken)) {
      throw new RegistryError('UNAUTHORIZED', undefined, { message: 'invalid peer token' });
    }
    return true;
  }

  const listener = (req: IncomingMessage, res: ServerResponse) => {
    handle(req as GatewayRequest, res).catch((err: unknown) => {
      log.error({ err }, 'gateway request failed');
      res.destroy();
    });
  };
  const server = options.tls
    ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' }, listener)
    : createHttpServer({ highWaterMark: CLIENT_SOCKET_HIGH_WATER_MARK }, listener);
  // Node 20's https server ignores the highWaterMark option: set it on each TLS socket, before its first request.
  if (options.tls) server.on('secureConnection', (socket: Duplex) => raiseHighWaterMark(socket, CLIENT_SOCKET_HIGH_WATER_MARK));
  server.requestTimeout = 0;
  server.keepAliveTimeout = KEEP_ALIVE_MS;
  server.on('close', () => {
    webConsole?.close();
    forwarder.close();
  });
  return server;
}

interface GatewayContext {
  user: string;
  upstream: string;
  worker: WorkerPlan | undefined;
  prefix: string | undefined;
  bytes: number;
  repository: string | undefined;
  reference: string | undefined;
  resource: NonNullable<import('../../../lib/access-log.js').AccessLogEntry['kind']>;
  /** A cache worker's answer: served from the cache (hit) or fetched upstream (miss). */
  cacheResult?: string;
}

type GatewayRequest = IncomingMessage & { gateway?: GatewayContext };

/** `http://host:port/v2/x?y` → `/v2/x?y`; an origin-form target as it is. */
function originForm(target: string): string {
  if (target.startsWith('/')) return target;
  const match = /^https?:\/\/[^/?#]*(.*)$/i.exec(target);
  if (!match) return target;
  const rest = match[1] ?? '';
  return rest.startsWith('/') ? rest : `/${rest}`;
}

/** Whether a worker answers GET /v2/ on its socket within 2 seconds. */
function probe(worker: WorkerPlan, agent: Agent): Promise<boolean> {
  return new Promise((resolve) => {
    const req = httpRequest({ socketPath: worker.socketPath, path: '/v2/', method: 'GET', agent, timeout: 2_000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
}
