import { createReadStream } from 'node:fs';
import { basename } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createDigester, digestOf, tryParseDigest, type Digest } from '../oci/digest.js';
import { MediaType } from '../oci/media-types.js';
import { fileInside } from './archive.js';
import type { SeedImage, SeedSource } from './importer.js';
import { nameImage, readDocument, type NamingOptions } from './oci-layout.js';
import { AirgapError } from './store-writer.js';

/**
 * A `docker save` / skopeo `docker-archive` tarball (K3s' k3s-airgap-images-*.tar): manifest.json
 * lists each image's config file, RepoTags and layer files. A registry manifest is built for each:
 * Docker schema 2 with the layers kept as they are (uncompressed tars are
 * application/vnd.docker.image.rootfs.diff.tar; gzip layers, as newer docker writes them, .tar.gzip;
 * zstd layers need an OCI manifest). The config is stored byte for byte, so the image ID (config
 * digest) and diff IDs are those of the saved image.
 */

const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
const LAYER_TYPES = {
  docker: { tar: 'application/vnd.docker.image.rootfs.diff.tar', gzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip' },
  oci: { tar: 'application/vnd.oci.image.layer.v1.tar', gzip: 'application/vnd.oci.image.layer.v1.tar+gzip', zstd: 'application/vnd.oci.image.layer.v1.tar+zstd' },
} as const;

type Compression = 'tar' | 'gzip' | 'zstd';

interface HashedFile {
  path: string;
  digest: Digest;
  size: number;
  compression: Compression;
}

interface ArchiveEntry {
  Config?: unknown;
  RepoTags?: unknown;
  Layers?: unknown;
}

/** The digest a file name claims (`<hex>.tar`, `<hex>.json`, `blobs/sha256/<hex>`), if it claims one. */
function digestInName(path: string): Digest | undefined {
  const match = /^(?:sha256:)?([a-f0-9]{64})(?:\.tar|\.json)?$/.exec(basename(path));
  return match ? tryParseDigest(`sha256:${match[1]}`) : undefined;
}

async function hashAndSniff(path: string): Promise<{ digest: Digest; size: number; compression: Compression }> {
  const hash = createDigester('sha256');
  let size = 0;
  let head: Buffer | undefined;
  await pipeline(createReadStream(path, { highWaterMark: 1024 * 1024 }), async (chunks: AsyncIterable<Buffer>) => {
    for await (const chunk of chunks) {
      if (!head) head = chunk.subarray(0, 4);
      hash.update(chunk);
      size += chunk.length;
    }
  });
  const hex = hash.digest('hex');
  let compression: Compression = 'tar';
  if (head && head[0] === 0x1f && head[1] === 0x8b) compression = 'gzip';
  else if (head && head.length === 4 && head.readUInt32BE(0) === 0x28b52ffd) compression = 'zstd';
  return { digest: { algorithm: 'sha256', hex, value: `sha256:${hex}` }, size, compression };
}

export async function openDockerArchive(dir: string, movable: boolean, options: NamingOptions): Promise<SeedSource> {
  const manifestPath = await fileInside(dir, 'manifest.json');
  if (!manifestPath) throw new AirgapError('manifest.json is missing');
  let entries: unknown;
  try {
    entries = JSON.parse((await readDocument(manifestPath, 'manifest.json')).toString('utf8'));
  } catch (err) {
    throw new AirgapError(`manifest.json of the docker-archive is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(entries)) throw new AirgapError('manifest.json of the docker-archive is not a list of images');

  const files = new Map<string, HashedFile>();
  const byDigest = new Map<string, string>();
  const manifests = new Map<string, Buffer>();
  const hashed = async (relative: string, what: string): Promise<HashedFile> => {
    const path = await fileInside(dir, relative);
    if (!path) throw new AirgapError(`${what} ${relative} is missing from the archive`);
    let file = files.get(path);
    if (!file) {
      file = { path, ...(await hashAndSniff(path)) };
      files.set(path, file);
    }
    const claimed = digestInName(relative);
    if (claimed && claimed.value !== file.digest.value) {
      throw new AirgapError(`${what} (${relative}) is corrupt: its name says ${claimed.value}, its content hashes to ${file.digest.value}`);
    }
    return file;
  };

  const images = new Map<string, SeedImage>();
  const problems: SeedSource['problems'] = [];
  for (const [i, raw] of (entries as ArchiveEntry[]).entries()) {
    const repoTags = Array.isArray(raw?.RepoTags) ? raw.RepoTags.filter((t): t is string => typeof t === 'string') : [];
    const label = repoTags[0] ?? `manifest.json entry ${i}`;
    try {
      if (typeof raw?.Config !== 'string' || !Array.isArray(raw.Layers) || !raw.Layers.every((l) => typeof l === 'string')) {
        throw new AirgapError('the entry needs "Config" and "Layers"');
      }
      if (repoTags.length === 0) throw new AirgapError('it has no RepoTags (an untagged image): nothing to name it by');
      const config = await hashed(raw.Config, 'config');
      const configBody = await readDocument(config.path, `config ${raw.Config}`);
      let diffIds: unknown[] = [];
      try {
        const parsed = JSON.parse(configBody.toString('utf8')) as { rootfs?: { diff_ids?: unknown } };
        if (Array.isArray(parsed.rootfs?.diff_ids)) diffIds = parsed.rootfs.diff_ids;
      } catch {
        throw new AirgapError(`config ${raw.Config} is not valid JSON`);
      }
      const layers: HashedFile[] = [];
      for (const [n, layerPath] of (raw.Layers as string[]).entries()) {
        const layer = await hashed(layerPath, `layer ${n + 1}`);
        // An uncompressed layer's digest is its diff ID: the config says what each layer must hash to.
        const diffId = diffIds[n];
        if (layer.compression === 'tar' && typeof diffId === 'string' && diffIds.length === raw.Layers.length && diffId !== layer.digest.value) {
          throw new AirgapError(`layer ${n + 1} (${layerPath}) is corrupt: its content hashes to ${layer.digest.value}, the image config's diff_id is ${diffId}`);
        }
        layers.push(layer);
      }
      const oci = layers.some((l) => l.compression === 'zstd');
      const layerType = (c: Compression): string => (oci ? LAYER_TYPES.oci[c] : LAYER_TYPES.docker[c as 'tar' | 'gzip']);
      const body = Buffer.from(JSON.stringify({
        schemaVersion: 2,
        mediaType: oci ? MediaType.OciManifest : MediaType.DockerManifest,
        config: { mediaType: oci ? 'application/vnd.oci.image.config.v1+json' : DOCKER_CONFIG, size: config.size, digest: config.digest.value },
        layers: layers.map((l) => ({ mediaType: layerType(l.compression), size: l.size, digest: l.digest.value })),
      }));
      const digest = digestOf(body);
      manifests.set(digest.value, body);
      for (const file of [config, ...layers]) byDigest.set(file.digest.value, file.path);
      for (const repoTag of repoTags) {
        const target = nameImage(repoTag, options);
        if (!target) throw new AirgapError(`RepoTag "${repoTag}" has no repository`);
        const key = `${target.name}\0${digest.value}`;
        const image = images.get(key) ?? { label: repoTag, sourceName: '', name: target.name, tags: [], digest, mediaType: oci ? MediaType.OciManifest : MediaType.DockerManifest };
        if (target.tag !== undefined) image.tags.push(target.tag);
        images.set(key, image);
      }
    } catch (err) {
      if (!(err instanceof AirgapError)) throw err;
      problems.push({ label, reason: err.message });
    }
  }
  return {
    kind: 'docker-archive',
    images: [...images.values()],
    problems,
    movable,
    readManifest: async (_name: string, digest: Digest) => manifests.get(digest.value),
    blobFile: async (_name: string, digest: Digest) => byDigest.get(digest.value),
  };
}
