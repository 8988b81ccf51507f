import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { parseDigest, type Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { parseRange } from '../../../../lib/http/range.js';
import { sendFileResponse, sendStreamResponse, SMALL_BLOB_MAX } from '../../../../lib/http/file-response.js';
import type { RegistryContext } from '../context.js';
import { isStorageNotFound } from '../../../../lib/storage/driver/driver.js';
import type { RemoteBlobSource } from '../../../../lib/storage/remote-blob-source.js';

/** Headers of every blob response (the digest is the blob's identity, so it is also its ETag). */
export function sendBlobHeaders(reply: FastifyReply, digest: Digest): void {
  reply.headers({
    'content-type': 'application/octet-stream',
    'docker-content-digest': digest.value,
    etag: `"${digest.value}"`,
    'accept-ranges': 'bytes',
    'cache-control': 'max-age=31536000',
  });
}

export function rangeNotSatisfiable(range: string | undefined, size: number): RegistryError {
  return new RegistryError('SIZE_INVALID', { range, size }, {
    status: 416, message: 'requested range not satisfiable', headers: { 'content-range': `bytes */${size}` },
  });
}

export async function getBlob(ctx: RegistryContext, name: string, rawDigest: string, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const digest = parseDigest(rawDigest);
  const unknown = () => new RegistryError('BLOB_UNKNOWN', { name, digest: digest.value });
  if (req.method === 'GET' && req.headers.range === undefined && req.headers['if-none-match'] === undefined
    && ctx.remoteBlobs && !ctx.blobs.hasCached(digest) && await ctx.remoteBlobs.readsWhole(digest)) {
    return getWholeBlob(ctx, ctx.remoteBlobs, name, digest, reply);
  }
  // Both at once: on S3 each is a round trip to the store.
  const [linked, info] = await Promise.all([ctx.blobs.isLinked(name, digest), ctx.blobs.statCached(digest)]);
  if (!linked || !info) throw unknown();
  sendBlobHeaders(reply, digest);
  if (req.headers['if-none-match'] === `"${digest.value}"`) {
    reply.code(304).send();
    return;
  }
  if (req.method === 'GET' && ctx.remoteBlobs) {
    // STEVEDORE_S3_REDIRECT: the client fetches the bytes (and its Range) from the store itself.
    const url = await ctx.remoteBlobs.redirectURL(ctx.layout.blobKey(digest), info.size, SMALL_BLOB_MAX);
    if (url !== undefined) {
      // The URL expires: nothing may cache this answer as it caches the blob itself.
      for (const header of ['accept-ranges', 'cache-control', 'content-type', 'etag']) reply.removeHeader(header);
      reply.code(307).header('location', url).header('cache-control', 'no-store').header('content-length', 0).send();
      return;
    }
  }
  const range = parseRange(req.headers.range, info.size);
  if (range.kind === 'unsatisfiable') throw rangeNotSatisfiable(req.headers.range, info.size);
  const start = range.kind === 'partial' ? range.range.start : 0;
  const end = range.kind === 'partial' ? range.range.end : info.size - 1;
  if (range.kind === 'partial') reply.code(206).header('content-range', `bytes ${start}-${end}/${info.size}`);
  else reply.code(200);
  reply.header('content-length', end - start + 1);
  if (req.method === 'HEAD') {
    reply.send();
    return;
  }
  if (info.size === 0) {
    reply.send(Buffer.alloc(0));
    return;
  }
  if (range.kind === 'full' && info.size <= SMALL_BLOB_MAX) {
    const data = await ctx.blobs.readSmallCached(digest, info.size);
    if (!data) throw unknown();
    reply.send(data);
    return;
  }
  if (ctx.blobs.filePath(digest) !== undefined) {
    const handle = await ctx.blobs.openHandle(digest);
    if (!handle) throw unknown();
    // The body bypasses fastify's stream piping: headers are written here and the file is copied
    // to the socket through two reused buffers, so serving a blob of any size holds ~2 MiB and
    // makes no garbage for the collector to catch up with.
    reply.hijack();
    const failure = await sendFileResponse({ handle, status: reply.statusCode, headers: reply.getHeaders() as OutgoingHttpHeaders, start, end }, reply.raw);
    if (failure) ctx.log.warn({ err: failure, name, digest: digest.value }, 'blob transfer failed');
    return;
  }
  // Any other store (S3): the local read cache's copy, or the store's ranged read streamed (a store
  // that is down fails here, before the headers: 503).
  const body = ctx.remoteBlobs
    ? await ctx.remoteBlobs.body(ctx.layout.blobKey(digest), digest, info.size, start, end).catch((err: unknown) => {
      if (isStorageNotFound(err)) throw unknown();
      throw err;
    })
    : { kind: 'stream' as const, stream: await ctx.blobs.open(digest, start, end) };
  if (body.kind === 'stream' && !body.stream) throw unknown();
  reply.hijack();
  const headers = reply.getHeaders() as OutgoingHttpHeaders;
  const failure = body.kind === 'file'
    ? await sendFileResponse({ handle: body.handle, status: reply.statusCode, headers, start: body.start, end: body.end }, reply.raw)
    : await sendStreamResponse(body.stream!, reply.statusCode, headers, end - start + 1, reply.raw);
  if (failure) ctx.log.warn({ err: failure, name, digest: digest.value }, 'blob transfer failed');
}

/**
 * A plain GET of a whole blob from a remote store (S3) when its size is not known here: the
 * repository's link is checked while the blob is read, and the size comes with the read's answer
 * (Content-Length). One store round trip and one request fewer than a stat before the read (a pull
 * is mostly such GETs). Nothing is sent before both answered: an unlinked blob's read is dropped.
 */
async function getWholeBlob(ctx: RegistryContext, remote: RemoteBlobSource, name: string, digest: Digest, reply: FastifyReply): Promise<void> {
  const [linked, opened] = await Promise.allSettled([ctx.blobs.isLinked(name, digest), ctx.blobs.openWhole(digest)]);
  const blob = opened.status === 'fulfilled' ? opened.value : undefined;
  if (linked.status === 'rejected' || !linked.value || !blob) {
    blob?.stream.destroy();
    if (linked.status === 'rejected') throw linked.reason;
    if (opened.status === 'rejected') throw opened.reason;
    throw new RegistryError('BLOB_UNKNOWN', { name, digest: digest.value });
  }
  // A small blob is read before any header is set: a store failing mid-read is then a clean 503.
  const small = blob.size <= SMALL_BLOB_MAX ? await ctx.blobs.keepSmall(digest, blob.stream, blob.size) : undefined;
  sendBlobHeaders(reply, digest);
  reply.code(200).header('content-length', blob.size);
  if (small) {
    reply.send(small);
    return;
  }
  reply.hijack();
  const headers = reply.getHeaders() as OutgoingHttpHeaders;
  const failure = await sendStreamResponse(remote.keepWhole(digest, blob.size, blob.stream), 200, headers, blob.size, reply.raw);
  if (failure) ctx.log.warn({ err: failure, name, digest: digest.value }, 'blob transfer failed');
}

export async function deleteBlob(ctx: RegistryContext, name: string, rawDigest: string, reply: FastifyReply): Promise<void> {
  const digest = parseDigest(rawDigest);
  if (!(await ctx.blobs.unlink(name, digest))) throw new RegistryError('BLOB_UNKNOWN', { name, digest: digest.value });
  ctx.log.info({ name, digest: digest.value }, 'blob unlinked');
  reply.code(202).send();
}
