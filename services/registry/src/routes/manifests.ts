import type { FastifyReply, FastifyRequest } from 'fastify';
import { manifestResponse } from '../../../../lib/oci/manifest-response.js';
import { lookupReference, parseReference, parseTag } from '../../../../lib/oci/reference.js';
import type { RegistryContext } from '../context.js';
import type { StoredManifest } from '../../../../lib/storage/manifest-store.js';
import { readLimitedBody } from './http.js';

export async function getManifest(ctx: RegistryContext, name: string, ref: string, req: FastifyRequest, reply: FastifyReply): Promise<void> {
  const reference = lookupReference(name, ref);
  sendManifest(await ctx.manifests.get(name, reference), name, ref, req, reply);
}

/** Answers GET/HEAD with a stored manifest, honouring Accept and If-None-Match. */
export function sendManifest(manifest: StoredManifest, name: string, ref: string, req: FastifyRequest, reply: FastifyReply): void {
  const answer = manifestResponse(manifest, name, ref, req.method, req.headers);
  reply.headers(answer.headers).code(answer.status).send(answer.body);
}

export async function putManifest(ctx: RegistryContext, name: string, ref: string, req: FastifyRequest, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const reference = parseReference(ref);
  const extraTags = query.getAll('tag').map(parseTag);
  const body = await readLimitedBody(req.raw, ctx.config.manifestMaxSize);
  const { digest, manifest } = await ctx.manifests.put(name, reference, body, req.headers['content-type'], extraTags);
  ctx.log.info({ name, reference: ref, digest: digest.value, mediaType: manifest.mediaType, size: body.length }, 'manifest pushed');
  const headers: Record<string, string> = {
    location: `/v2/${name}/manifests/${digest.value}`,
    'docker-content-digest': digest.value,
  };
  if (manifest.subject) headers['oci-subject'] = manifest.subject.digest;
  reply.code(201).headers(headers).send();
}

export async function deleteManifest(ctx: RegistryContext, name: string, ref: string, reply: FastifyReply): Promise<void> {
  const reference = lookupReference(name, ref);
  await ctx.manifests.delete(name, reference);
  ctx.log.info({ name, reference: ref }, reference.kind === 'tag' ? 'tag deleted' : 'manifest deleted');
  reply.code(202).send();
}
