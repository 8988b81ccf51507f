import type { FileHandle } from 'node:fs/promises';
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { parseDigest, type Digest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { parseRange } from '../../../../lib/http/range.js';
import type { RegistryContext } from '../context.js';
import { BLOB_READ_CHUNK, SMALL_BLOB_CACHEABLE } from '../store/blob-store.js';

/** Blobs up to this size are read in one call (and cached); larger ones stream. */
const SMALL_BLOB = SMALL_BLOB_CACHEABLE;

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
  if (!(await ctx.blobs.isLinked(name, digest))) throw unknown();
  const info = await ctx.blobs.statCached(digest);
  if (!info) throw unknown();
  sendBlobHeaders(reply, digest);
  if (req.headers['if-none-match'] === `"${digest.value}"`) {
    reply.code(304).send();
    return;
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
  if (range.kind === 'full' && info.size <= SMALL_BLOB) {
    const data = await ctx.blobs.readSmallCached(digest, info.size);
    if (!data) throw unknown();
    reply.send(data);
    return;
  }
  const handle = await ctx.blobs.openHandle(digest);
  if (!handle) throw unknown();
  // The body bypasses fastify's stream piping: headers are written here and the file is copied
  // to the socket through two reused buffers, so serving a blob of any size holds ~2 MiB and
  // makes no garbage for the collector to catch up with.
  reply.hijack();
  const res = reply.raw;
  try {
    res.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);
    await copyToResponse(handle, res, start, end);
  } catch (err) {
    // Headers are out: a failed transfer must look broken to the client, never short.
    res.destroy();
    if (!isClientGone(err)) ctx.log.warn({ err, name, digest: digest.value }, 'blob transfer failed');
  } finally {
    await handle.close().catch(() => {});
  }
}

/** Spare read buffers of BLOB_READ_CHUNK bytes, reused across transfers (bounded). */
const sparePool: Buffer[] = [];
const SPARE_POOL_MAX = 8;

class ClientGoneError extends Error {}

function isClientGone(err: unknown): boolean {
  return err instanceof ClientGoneError || (err as NodeJS.ErrnoException).code === 'ERR_STREAM_DESTROYED'
    || (err as NodeJS.ErrnoException).code === 'ECONNRESET' || (err as NodeJS.ErrnoException).code === 'EPIPE';
}

/**
 * Copies bytes `start..end` (inclusive) of an open file to the response, then ends it. Double
 * buffered: the next chunk is read while the previous one is being written; a buffer is refilled
 * only once the socket has taken all of it (its write callback), which is also the backpressure.
 */
async function copyToResponse(handle: FileHandle, res: ServerResponse, start: number, end: number): Promise<void> {
  const total = end - start + 1;
  const pooled = total >= BLOB_READ_CHUNK;
  const size = pooled ? BLOB_READ_CHUNK : total;
  const buffers = [pooled ? sparePool.pop() ?? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size)];
  if (total > size) buffers.push(pooled ? sparePool.pop() ?? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size));
  const writes: Array<Promise<void> | undefined> = [undefined, undefined];

  let gone: (() => void) | undefined;
  const closed = new Promise<never>((_, reject) => {
    gone = () => reject(new ClientGoneError('client closed the connection'));
  });
  closed.catch(() => {});
  const onClose = () => {
    if (!res.writableFinished) gone!();
  };
  res.once('close', onClose);
  try {
    let position = start;
    let turn = 0;
    while (position <= end) {
      const buffer = buffers[turn]!;
      const pending = writes[turn];
      if (pending) await Promise.race([pending, closed]);
      const want = Math.min(buffer.length, end - position + 1);
      const { bytesRead } = await handle.read(buffer, 0, want, position);
      if (bytesRead === 0) throw new Error(`blob file ended at ${position}, expected ${end + 1} bytes`);
      if (res.destroyed) throw new ClientGoneError('client closed the connection');
      position += bytesRead;
      const chunk = bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead);
      writes[turn] = new Promise<void>((resolve, reject) => {
        res.write(chunk, (err) => (err ? reject(err) : resolve()));
      });
      writes[turn]!.catch(() => {});
      turn = (turn + 1) % buffers.length;
    }
    await Promise.race([Promise.all(writes), closed]);
    await Promise.race([new Promise<void>((resolve) => res.end(resolve)), closed]);
    // Every write completed: no socket request still refers to the buffers.
    if (pooled) for (const buffer of buffers) if (sparePool.length < SPARE_POOL_MAX) sparePool.push(buffer);
  } finally {
    res.off('close', onClose);
  }
}

export async function deleteBlob(ctx: RegistryContext, name: string, rawDigest: string, reply: FastifyReply): Promise<void> {
  const digest = parseDigest(rawDigest);
  if (!(await ctx.blobs.unlink(name, digest))) throw new RegistryError('BLOB_UNKNOWN', { name, digest: digest.value });
  ctx.log.info({ name, digest: digest.value }, 'blob unlinked');
  reply.code(202).send();
}
