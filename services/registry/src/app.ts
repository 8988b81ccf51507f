import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { WORKER_STATUS_PATH } from '../../../lib/appliance.js';
import type { Logger } from '../../../lib/log.js';
import type { RegistryConfig } from '../../../lib/config.js';
import { RegistryError, isRegistryError } from '../../../lib/oci/errors.js';
import { echoedNamespace, parseRegistryPath, splitUrl, type RegistryRoute } from '../../../lib/oci/route.js';
import { StorageLayout } from '../../../lib/storage/layout.js';
import type { RegistryContext } from './context.js';
import { BlobStore } from './store/blob-store.js';
import { ManifestStore } from './store/manifest-store.js';
import { UploadStore } from './store/upload-store.js';
import { deleteBlob, getBlob } from './routes/blobs.js';
import { ProxyCache } from './proxy/proxy-cache.js';
import { UpstreamClient } from './proxy/upstream-client.js';
import { parseReference } from '../../../lib/oci/reference.js';
import type { UpstreamCredentials } from '../../../lib/upstreams.js';
import { listCatalog, listReferrers, listTags } from './routes/listings.js';
import { deleteManifest, getManifest, putManifest } from './routes/manifests.js';
import { cancelUpload, finishUpload, getUploadStatus, patchUpload, startUpload } from './routes/uploads.js';

export interface RegistryOptions {
  config: Pick<RegistryConfig, 'root' | 'readOnly' | 'manifestMaxSize'>
    & Partial<Pick<RegistryConfig, 'upstream' | 'tagTtl' | 'negativeTtl' | 'upstreamTimeout' | 'fillTimeout'>>;
  log: Logger;
  /** Credentials for the upstream of a pull-through cache (from the auths file). */
  upstreamCredentials?: UpstreamCredentials;
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
      const reference = parseReference(route.reference);
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

/** Renders any error as OCI error JSON; internals of unexpected errors never reach the client. */
function sendError(log: Logger, err: unknown, req: FastifyRequest, reply: FastifyReply): void {
  let error: RegistryError;
  if (isRegistryError(err)) {
    error = err;
  } else {
    const status = (err as { statusCode?: number }).statusCode;
    if (status === 413) error = new RegistryError('SIZE_INVALID', undefined, { status: 413, message: 'request body too large' });
    else if (typeof status === 'number' && status >= 400 && status < 500) {
      error = new RegistryError('UNSUPPORTED', undefined, { status, message: 'malformed request' });
    } else {
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

export interface RegistryApp {
  app: FastifyInstance;
  context: RegistryContext;
}

/** Builds one registry worker (not listening): the stores over `config.root` and the /v2/ API. */
export function buildRegistry({ config, log, upstreamCredentials }: RegistryOptions): RegistryApp {
  const layout = new StorageLayout(config.root, { namespace: config.upstream?.host });
  const blobs = new BlobStore(layout);
  const context: RegistryContext = {
    config,
    log,
    layout,
    blobs,
    manifests: new ManifestStore(layout, blobs),
    uploads: new UploadStore(layout, blobs),
  };
  if (config.upstream) {
    const client = new UpstreamClient(config.upstream, upstreamCredentials, log, config.upstreamTimeout ?? 30_000);
    context.proxy = new ProxyCache(context, client, {
      tagTtlMs: config.tagTtl ?? 5 * 60_000,
      negativeTtlMs: config.negativeTtl ?? 15_000,
      fillTimeoutMs: config.fillTimeout ?? 5 * 60_000,
    });
  }
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
  });
  // Bodies are streamed by the handlers (blobs) or read with a cap (manifests), never parsed here.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_req, _payload, done) => done(null, undefined));
  app.setErrorHandler((err, req, reply) => sendError(log, err, req, reply));
  app.setNotFoundHandler((req, reply) => {
    sendError(log, new RegistryError('NAME_UNKNOWN', { path: (req.raw.url ?? '').slice(0, 300) }, { message: 'no registry endpoint at this path' }), req, reply);
  });
  if (context.proxy) {
    const client = context.proxy.client;
    app.addHook('onClose', async () => client.close());
  }
  // Handlers answer with reply.send (streams included); returning the reply tells fastify not to
  // send the promise's value as a second, empty response.
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    await dispatch(context, req, reply);
    return reply;
  };
  // Internal, outside /v2/: only the gateway reaches a worker's socket, and it forwards /v2/ paths only.
  app.get(WORKER_STATUS_PATH, async (_req, reply) => reply.header('cache-control', 'no-store').send(context.proxy ? { kind: 'proxy', ...context.proxy.client.statusView() } : { kind: 'hosted' }));
  app.route({ method: [...METHODS], url: '/v2', handler });
  app.route({ method: [...METHODS], url: '/v2/*', handler });
  return { app, context };
}
