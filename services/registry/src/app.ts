import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { WORKER_STATUS_PATH } from '../../../lib/appliance.js';
import type { Logger } from '../../../lib/log.js';
import type { RegistryConfig } from '../../../lib/config.js';
import { RegistryError, isRegistryError } from '../../../lib/oci/errors.js';
import { echoedNamespace, parseRegistryPath, splitUrl, type RegistryRoute } from '../../../lib/oci/route.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import type { StorageDriver } from '../../../lib/storage/driver/driver.js';
import { FilesystemDriver } from '../../../lib/storage/driver/filesystem.js';
import { RemoteBlobSource, type RemoteBlobSettings } from '../../../lib/storage/remote-blob-source.js';
import type { RegistryContext } from './context.js';
import { BlobStore } from '../../../lib/storage/blob-store.js';
import { ManifestStore } from '../../../lib/storage/manifest-store.js';
import { UploadStore } from '../../../lib/storage/upload-store.js';
import { deleteBlob, getBlob } from './routes/blobs.js';
import type { ProxyCache, ProxyOptions } from './proxy/proxy-cache.js';
import type { PeerSettings } from './proxy/shared-fill.js';
import { lookupReference } from '../../../lib/oci/reference.js';
import type { UpstreamCredentials } from '../../../lib/upstreams.js';
import { listCatalog, listReferrers, listTags } from './routes/listings.js';
import { deleteManifest, getManifest, putManifest } from './routes/manifests.js';
import { cancelUpload, finishUpload, getUploadStatus, patchUpload, startUpload } from './routes/uploads.js';

export interface RegistryOptions {
  config: Pick<RegistryConfig, 'root' | 'readOnly' | 'manifestMaxSize'>
    & Partial<Pick<RegistryConfig, 'upstream' | 'tagTtl' | 'negativeTtl' | 'upstreamTimeout' | 'fillTimeout'>>;
  log: Logger;
  /**
   * Other appliances write to the store too (lib/config.ts isSharedStore): tags, revisions and links
   * are read from the store on every request, not trusted from memory for a while. Default false.
   */
  sharedStore?: boolean;
  /**
   * The store (see openConfiguredStorage); default: the filesystem store at `config.root`, which stays
   * the local directory either way (temp files of cache fills).
   */
  driver?: StorageDriver;
  /** STEVEDORE_S3_REDIRECT and the local read cache, for a store that is not a directory. */
  remoteBlobs?: RemoteBlobSettings;
  /** Credentials for the upstream of a pull-through cache (from the auths file). */
  upstreamCredentials?: UpstreamCredentials;
  /** How a cache worker on a shared store shares its fills with the other appliances (STEVEDORE_PEER_*). */
  peer?: PeerSettings;
  /** Cache settings that have no option of their own (tests: the upstream tag-list page size). */
  proxyOptions?: Partial<ProxyOptions>;
}

const METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'] as const;
const WRITE_METHODS: ReadonlySet<string> = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** Methods each endpoint answers (anything else is 405 UNSUPPORTED with an Allow header). */
const ALLOWED: Record<RegistryRoute['kind'], readonly string[]> = {
  base: ['GET', 'HEAD'],
  catalog: ['GET', 'HEAD'],
  manifest: ['GET', 'HEAD', 'PUT', 'DELETE'],
  blob: ['GET', 'HEAD', 'DELETE'],
  upload: ['POST', 'PATCH', 'PUT', 'GET', 'DELETE'],
  tags: ['GET', 'HEAD'],
  referrers: ['GET', 'HEAD'],
};

async function dispatch(ctx: RegistryContext, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  reply.header('docker-distribution-api-version', 'registry/2.0');
  const { path, query } = splitUrl(req.raw.url ?? '/');
  const route = parseRegistryPath(path);
  const method = req.method;
  if (!ALLOWED[route.kind].includes(method)) {
    throw new RegistryError('UNSUPPORTED', { method, path: path.slice(0, 300) }, {
      message: `method ${method} is not allowed on this endpoint`, headers: { allow: ALLOWED[route.kind].join(', ') },
    });
  }
  if (ctx.config.readOnly && WRITE_METHODS.has(method)) {
    throw new RegistryError('UNSUPPORTED', { method }, { message: 'this registry is read-only: pushes and deletes are disabled' });
  }
  const ns = echoedNamespace(query.get('ns'));
  if (ns) reply.header('oci-namespace', ns);
  // The ping and the catalog (what this worker stores) are the same for every kind of worker.
  if (route.kind === 'base') return void reply.code(200).header('content-type', 'application/json').send('{}');
  if (route.kind === 'catalog') return listCatalog(ctx, reply, query);
  if (ctx.proxy) return dispatchProxy(ctx, ctx.proxy, route, req, reply, query);

  switch (route.kind) {
    case 'tags':
      return listTags(ctx, route.name, reply, query);
    case 'referrers':
      return listReferrers(ctx, route.name, route.digest, reply, query);
    case 'manifest':
      if (method === 'PUT') return putManifest(ctx, route.name, route.reference, req, reply, query);
      if (method === 'DELETE') return deleteManifest(ctx, route.name, route.reference, reply);
      return getManifest(ctx, route.name, route.reference, req, reply);
    case 'blob':
      if (method === 'DELETE') return deleteBlob(ctx, route.name, route.digest, reply);
      return getBlob(ctx, route.name, route.digest, req, reply);
    case 'upload': {
      const id = route.uploadId;
      if (id === undefined) {
        if (method !== 'POST') throw new RegistryError('BLOB_UPLOAD_UNKNOWN', undefined, { message: 'an upload session id is required' });
        return startUpload(ctx, route.name, req, reply, query);
      }
      if (method === 'PATCH') return patchUpload(ctx, route.name, id, req, reply);
      if (method === 'PUT') return finishUpload(ctx, route.name, id, req, reply, query);
      if (method === 'GET') return getUploadStatus(ctx, route.name, id, reply);
      if (method === 'DELETE') return cancelUpload(ctx, route.name, id, reply);
      throw new RegistryError('UNSUPPORTED', { method }, { message: 'POST starts an upload; it cannot target a session' });
    }
  }
}

/** A pull-through cache worker: reads come from the cache or the upstream; DELETE purges the cache. */
async function dispatchProxy(ctx: RegistryContext, proxy: ProxyCache, route: Exclude<RegistryRoute, { kind: 'base' | 'catalog' }>, req: FastifyRequest, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const method = req.method;
  if (route.kind === 'upload' || (route.kind === 'manifest' && method === 'PUT')) {
    throw new RegistryError('UNSUPPORTED', { method }, { message: `this is a pull-through cache of ${proxy.client.endpoint.host}: pushes are not supported` });
  }
  switch (route.kind) {
    case 'tags':
      return proxy.listTags(route.name, reply, query, () => listTags(ctx, route.name, reply, query));
    case 'referrers':
      return proxy.listReferrers(route.name, route.digest, reply, query, () => listReferrers(ctx, route.name, route.digest, reply, query));
    case 'manifest': {
      const reference = lookupReference(route.name, route.reference);
      if (method === 'DELETE') {
        await proxy.purgeManifest(route.name, reference);
        return void reply.code(202).send();
      }
      return proxy.getManifest(route.name, route.reference, reference, req, reply);
    }
    case 'blob':
      if (method === 'DELETE') {
        if (!(await proxy.purgeBlob(route.name, route.digest))) throw new RegistryError('BLOB_UNKNOWN', { name: route.name, digest: route.digest });
        return void reply.code(202).send();
      }
      return proxy.getBlob(route.name, route.digest, req, reply);
  }
}

/** The OCI error a fastify or HTTP-parser error stands for (malformed requests are the client's fault). */
function frameworkError(err: unknown): RegistryError | undefined {
  const status = (err as { statusCode?: number }).statusCode;
  if (status === 413) return new RegistryError('SIZE_INVALID', undefined, { status: 413, message: 'request body too large' });
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const reason = (err as Error).message;
    return new RegistryError('UNSUPPORTED', undefined, { status, message: reason ? `request refused: ${reason.slice(0, 200)}` : 'malformed request' });
  }
  return undefined;
}

/** Renders any error as OCI error JSON; internals of unexpected errors never reach the client. */
function sendError(log: Logger, err: unknown, req: FastifyRequest, reply: FastifyReply): void {
  let error: RegistryError;
  if (isRegistryError(err)) {
    error = err;
  } else {
    const mapped = frameworkError(err);
    if (mapped) error = mapped;
    else {
      log.error({ err, method: req.method, url: req.raw.url }, 'request failed');
      error = new RegistryError('UNKNOWN', undefined, { message: 'internal server error' });
    }
  }
  if (reply.sent || reply.raw.headersSent) {
    // A streamed response failed midway: the client must see a broken transfer, not a short blob.
    reply.raw.destroy();
    return;
  }
  if (error.status >= 500) log.warn({ code: error.code, status: error.status, url: req.raw.url }, error.message);
  reply
    .code(error.status)
    .headers({ ...error.headers, 'docker-distribution-api-version': 'registry/2.0', 'content-type': 'application/json' })
    .send(JSON.stringify(error.toBody()));
}

/**
 * A request the HTTP parser refused (bad Content-Length, unknown method token, malformed request
 * line, oversized headers, timeout): answered on the socket, as OCI error JSON like every other error.
 */
function sendClientError(err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return;
  let status = 400;
  let message = `malformed HTTP request${err.code?.startsWith('HPE_') ? ` (${err.code})` : ''}`;
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = 'request timeout';
  } else if (err.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'request headers too large';
  }
  const body = JSON.stringify(new RegistryError('UNSUPPORTED', undefined, { status, message }).toBody());
  // As node does by default: an answer already under way on this socket must not be followed by a second one.
  const answering = (socket as Duplex & { _httpMessage?: { headersSent?: boolean } })._httpMessage?.headersSent === true;
  if (socket.writable && !answering) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\n`
      + `docker-distribution-api-version: registry/2.0\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  }
  socket.destroy();
}

/**
 * An absolute-form request target (`GET http://host:port/v2/ HTTP/1.1`, which RFC 9112 §3.2.2 says
 * servers MUST accept) is served as its origin-form path; anything else is left as it came.
 */
export function originForm(url: string): string {
  if (url.startsWith('/')) return url;
  const match = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*/i.exec(url);
  if (!match) return url;
  const rest = url.slice(match[0].length);
  return rest.startsWith('/') ? rest : `/${rest}`;
}

export interface RegistryApp {
  app: FastifyInstance;
  context: RegistryContext;
}

/**
 * Builds one registry worker (not listening): the stores over `driver` and the /v2/ API. The
 * pull-through code (and undici with it, ~10 MB of a worker's RSS) is loaded only by a cache worker.
 */
export async function buildRegistry({ config, log, sharedStore = false, driver = new FilesystemDriver(config.root), remoteBlobs, upstreamCredentials, proxyOptions, peer }: RegistryOptions): Promise<RegistryApp> {
  const layout = new StorageLayout(config.root, { namespace: config.upstream?.host });
  const blobs = new BlobStore(driver, layout, sharedStore ? { linkRecheckMs: 0 } : undefined);
  const context: RegistryContext = {
    config,
    log,
    driver,
    layout,
    blobs,
    manifests: new ManifestStore(blobs, sharedStore ? { recheckMs: 0 } : undefined),
    uploads: new UploadStore(blobs),
  };
  if (!(driver instanceof FilesystemDriver)) {
    context.remoteBlobs = new RemoteBlobSource(driver, remoteBlobs ?? { redirectTtlMs: undefined, localCache: undefined });
  }
  if (config.upstream) {
    const [{ ProxyCache }, { UpstreamClient }] = await Promise.all([import('./proxy/proxy-cache.js'), import('./proxy/upstream-client.js')]);
    const client = new UpstreamClient(config.upstream, upstreamCredentials, log, config.upstreamTimeout ?? 30_000);
    context.proxy = new ProxyCache(context, client, {
      tagTtlMs: config.tagTtl ?? 5 * 60_000,
      negativeTtlMs: config.negativeTtl ?? 15_000,
      fillTimeoutMs: config.fillTimeout ?? 5 * 60_000,
      upstreamTimeoutMs: config.upstreamTimeout ?? 30_000,
      ...(sharedStore ? { shared: peer ?? { url: undefined, token: undefined, caPath: undefined, leaseTtlMs: 15_000 } } : {}),
      sharedStore,
      fillLeaseMs: peer?.leaseTtlMs ?? 15_000,
      ...proxyOptions,
    });
  }
  // Handlers answer with reply.send (streams included); returning the reply tells fastify not to
  // send the promise's value as a second, empty response.
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    await dispatch(context, req, reply);
    return reply;
  };
  const app = Fastify({
    loggerInstance: log as FastifyBaseLogger,
    // Per-request lines belong to the gateway's access log; a worker logs writes and failures.
    logController: new LogController({ disableRequestLogging: true }),
    // No per-request child logger: the handlers log through the worker's logger, and creating a
    // child (with its serialized reqId binding) for every request costs more than serving a manifest.
    childLoggerFactory: (logger) => logger,
    exposeHeadRoutes: false,
    return503OnClosing: true,
    requestTimeout: 0,
    bodyLimit: config.manifestMaxSize,
    routerOptions: { maxParamLength: 4096 },
    rewriteUrl: (req) => originForm(req.url ?? '/'),
    clientErrorHandler: sendClientError,
    // A path fastify's router cannot decode (`%C0%AE`) or that is too long for it still goes to the
    // registry's own raw-path parser, which answers it as the spec says.
    frameworkErrors: (_err, req, reply) => void handler(req, reply).catch((err: unknown) => sendError(log, err, req, reply)),
  });
  // Bodies are streamed by the handlers (blobs) or read with a cap (manifests), never parsed here.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));
  app.setErrorHandler((err, req, reply) => sendError(log, err, req, reply));
  // Not found by fastify: a path outside /v2 or a method no endpoint has (TRACE, OPTIONS, PROPFIND):
  // the registry's own parser answers 404 NAME_UNKNOWN or 405 UNSUPPORTED with Allow.
  app.setNotFoundHandler(handler);
  if (context.proxy) {
    const client = context.proxy.client;
    app.addHook('onClose', async () => {
      await client.close();
      await context.proxy?.close();
    });
  }
  // Internal, outside /v2/: only the gateway reaches a worker's socket, and it forwards /v2/ paths only.
  app.get(WORKER_STATUS_PATH, async (_req, reply) => reply.header('cache-control', 'no-store').send(context.proxy ? { kind: 'proxy', ...context.proxy.client.statusView() } : { kind: 'hosted' }));
  app.route({ method: [...METHODS], url: '/v2', handler });
  app.route({ method: [...METHODS], url: '/v2/*', handler });
  return { app, context };
}
