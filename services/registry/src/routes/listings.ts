import type { FastifyReply } from 'fastify';
import { parseDigest } from '../../../../lib/oci/digest.js';
import { MediaType } from '../../../../lib/oci/media-types.js';
import type { RegistryContext } from '../context.js';
import { listRepositories } from '../../../../lib/storage/catalog.js';
import { paginate, parsePagination } from './http.js';

/** Largest page served; larger `n` (or none) is answered with this many and a Link to the rest. */
export const TAGS_PAGE_CAP = 10_000;
const CATALOG_PAGE_CAP = 1_000;

export async function listTags(ctx: RegistryContext, name: string, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const { n, last } = parsePagination(query, TAGS_PAGE_CAP);
  const tags = await ctx.manifests.listTags(name);
  const { page, link } = paginate(tags, n, last, `/v2/${name}/tags/list`);
  if (link) reply.header('link', link);
  reply.code(200).header('content-type', 'application/json').send(JSON.stringify({ name, tags: page }));
}

export async function listCatalog(ctx: RegistryContext, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const { n, last } = parsePagination(query, CATALOG_PAGE_CAP);
  const { page, link } = paginate(await listRepositories(ctx.driver, ctx.layout), n, last, '/v2/_catalog');
  if (link) reply.header('link', link);
  reply.code(200).header('content-type', 'application/json').send(JSON.stringify({ repositories: page }));
}

export async function listReferrers(ctx: RegistryContext, name: string, rawDigest: string, reply: FastifyReply, query: URLSearchParams): Promise<void> {
  const subject = parseDigest(rawDigest);
  const artifactType = query.get('artifactType') ?? undefined;
  const index = await ctx.manifests.referrers(name, subject, artifactType);
  if (artifactType !== undefined) reply.header('oci-filters-applied', 'artifactType');
  // A Buffer body keeps the media type exact (fastify appends a charset to string bodies).
  reply.code(200).header('content-type', MediaType.OciIndex).send(Buffer.from(JSON.stringify(index)));
}
