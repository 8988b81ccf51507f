import type { FastifyReply, FastifyRequest } from 'fastify';
import { parseDigest } from '../../../../lib/oci/digest.js';
import { RegistryError } from '../../../../lib/oci/errors.js';
import { parseRepositoryName } from '../../../../lib/oci/reference.js';
import { parseUploadContentRange } from '../../../../lib/http/range.js';
import type { RegistryContext } from '../context.js';
import { uploadHeaders, type UploadSession } from '../../../../lib/storage/upload-store.js';
import { contentLength, hasBody } from './http.js';

function blobCreated(reply: FastifyReply, name: string, digest: string): void {
  reply.code(201).headers({ location: `/v2/${name}/blobs/${digest}`, 'docker-content-digest': digest, 'content-length': 0 }).send();
}

function sessionAccepted(reply: FastifyReply, session: UploadSession, status: 202 | 204): void {
  reply.code(status).headers({ ...uploadHeaders(session), 'content-length': 0 }).send();
}

/** POST /v2/<name>/blobs/uploads/: cross-repository mount, monolithic upload, or a new session. */
export async function startUpload(ctx: RegistryContext, name: string, req: FastifyRequest, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const mount = query.get('mount');
  if (mount !== null) {
    const digest = parseDigest(mount);
    const from = query.get('from');
    if (from !== null) {
      parseRepositoryName(from);
      if ((await ctx.blobs.isLinked(from, digest)) && (await ctx.blobs.stat(digest))) {
        await ctx.blobs.link(name, digest);
        ctx.log.info({ name, from, digest: digest.value }, 'blob mounted');
        blobCreated(reply, name, digest.value);
        return;
      }
    }
    // Not mountable: the spec's fallback is a normal upload session (202).
  }
  const rawDigest = query.get('digest');
  if (rawDigest !== null) {
    const digest = parseDigest(rawDigest);
    const size = await ctx.blobs.writeVerified(req.raw, digest, contentLength(req.raw));
    await ctx.blobs.link(name, digest);
    ctx.log.info({ name, digest: digest.value, size }, 'blob pushed (monolithic)');
    blobCreated(reply, name, digest.value);
    return;
  }
  const session = await ctx.uploads.create(name);
  sessionAccepted(reply, session, 202);
}

function chunkRange(req: FastifyRequest): { start: number | undefined; length: number | undefined } {
  const header = req.headers['content-range'];
  const length = contentLength(req.raw);
  if (header === undefined) return { start: undefined, length };
  const range = parseUploadContentRange(header);
  if (!range) {
    throw new RegistryError('BLOB_UPLOAD_INVALID', { contentRange: header.slice(0, 100) }, {
      status: 416, message: 'invalid Content-Range: expected <start>-<end>',
    });
  }
  const rangeLength = range.end - range.start + 1;
  if (length !== undefined && length !== rangeLength) {
    throw new RegistryError('SIZE_INVALID', { contentRange: header, contentLength: length }, {
      message: 'Content-Length does not match Content-Range',
    });
  }
  return { start: range.start, length: rangeLength };
}

/** PATCH: appends one chunk (streamed, or with Content-Range). */
export async function patchUpload(ctx: RegistryContext, name: string, uploadId: string, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const session = await ctx.uploads.get(name, uploadId);
  const { start, length } = chunkRange(req);
  await ctx.uploads.append(session, req.raw, start, length);
  sessionAccepted(reply, session, 202);
}

/** PUT ?digest=: appends an optional last chunk, verifies the digest and makes the blob visible. */
export async function finishUpload(ctx: RegistryContext, name: string, uploadId: string, req: FastifyRequest, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const rawDigest = query.get('digest');
  if (rawDigest === null) {
    throw new RegistryError('DIGEST_INVALID', undefined, { message: 'the digest query parameter is required to finish an upload' });
  }
  const digest = parseDigest(rawDigest);
  const session = await ctx.uploads.get(name, uploadId);
  if (hasBody(req.raw)) {
    const { start, length } = chunkRange(req);
    await ctx.uploads.append(session, req.raw, start, length);
  }
  const size = await ctx.uploads.finish(session, digest);
  ctx.log.info({ name, digest: digest.value, size }, 'blob pushed');
  blobCreated(reply, name, digest.value);
}

export async function getUploadStatus(ctx: RegistryContext, name: string, uploadId: string, reply: FastifyReply): Promise<void> {
  sessionAccepted(reply, await ctx.uploads.get(name, uploadId), 204);
}

export async function cancelUpload(ctx: RegistryContext, name: string, uploadId: string, reply: FastifyReply): Promise<void> {
  await ctx.uploads.cancel(await ctx.uploads.get(name, uploadId));
  reply.code(204).send();
}
