import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';

/** Builds real images offline: OCI image layouts with gzip tar layers, configs and (optionally) an index; reads back what skopeo wrote. */

const sha256hex = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;

/** An Accept header naming the four manifest types clients ask for (OCI and Docker, image and index). */
export const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
].join(', ');

export interface Blob {
  digest: string;
  size: number;
  data: Buffer;
  mediaType: string;
}

function blob(data: Buffer, mediaType: string): Blob {
  return { digest: sha256hex(data), size: data.length, data, mediaType };
}

/** A ustar archive of regular files (enough for a real, unpackable layer). */
export function tarOf(files: Array<{ name: string; data: Buffer }>): Buffer {
  const parts: Buffer[] = [];
  for (const file of files) {
    const header = Buffer.alloc(512);
    header.write(file.name, 0, 100, 'utf8');
    header.write('0000644\0', 100);
    header.write('0000000\0', 108);
    header.write('0000000\0', 116);
    header.write(`${file.data.length.toString(8).padStart(11, '0')}\0`, 124);
    header.write(`${Math.floor(Date.UTC(2024, 0, 1) / 1000).toString(8).padStart(11, '0')}\0`, 136);
    header.write('        ', 148);
    header.write('0', 156);
    header.write('ustar\0', 257);
    header.write('00', 263);
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
    parts.push(header, file.data, Buffer.alloc((512 - (file.data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

export interface BuiltImage {
  manifest: Blob;
  config: Blob;
  layers: Blob[];
  platform: { os: string; architecture: string };
}

/** One image: `layerSizes` random-content layers (bytes before compression; random data barely compresses). */
export function buildImage(options: { layerSizes?: number[]; architecture?: string; seed?: string } = {}): BuiltImage {
  const architecture = options.architecture ?? 'amd64';
  const layerSizes = options.layerSizes ?? [1024];
  const layers: Blob[] = [];
  const diffIds: string[] = [];
  layerSizes.forEach((size, i) => {
    const tar = tarOf([{ name: `layer-${i}-${options.seed ?? ''}.bin`, data: randomBytes(size) }]);
    diffIds.push(sha256hex(tar));
    layers.push(blob(gzipSync(tar, { level: 1 }), 'application/vnd.oci.image.layer.v1.tar+gzip'));
  });
  const config = blob(Buffer.from(JSON.stringify({
    architecture,
    os: 'linux',
    created: '2024-01-01T00:00:00Z',
    config: { Cmd: ['/bin/true'], Labels: { seed: options.seed ?? randomBytes(4).toString('hex') } },
    rootfs: { type: 'layers', diff_ids: diffIds },
  })), 'application/vnd.oci.image.config.v1+json');
  const manifest = blob(Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  })), 'application/vnd.oci.image.manifest.v1+json');
  return { manifest, config, layers, platform: { os: 'linux', architecture } };
}

export function buildIndex(images: BuiltImage[]): Blob {
  return blob(Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.index.v1+json',
    manifests: images.map((img) => ({ mediaType: img.manifest.mediaType, digest: img.manifest.digest, size: img.manifest.size, platform: img.platform })),
  })), 'application/vnd.oci.image.index.v1+json');
}

/** Writes an OCI image layout directory holding `images` (and `index` if given) under tag `tag`. */
export async function writeOciLayout(dir: string, tag: string, images: BuiltImage[], index?: Blob): Promise<void> {
  await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  const all: Blob[] = images.flatMap((img) => [img.manifest, img.config, ...img.layers]);
  if (index) all.push(index);
  for (const b of all) await writeFile(join(dir, 'blobs', 'sha256', b.digest.slice(7)), b.data);
  const top = index ?? images[0]!.manifest;
  await writeFile(join(dir, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: top.mediaType, digest: top.digest, size: top.size, annotations: { 'org.opencontainers.image.ref.name': tag } }],
  }));
}


export interface PulledLayout {
  /** Digest of the manifest (or index) the layout's index.json names. */
  top: string;
  /** Every manifest in the layout, by digest, with its config and layer digests. */
  manifests: Array<{ digest: string; config: string; layers: string[] }>;
}

/** Reads what `skopeo copy ... oci:DIR:tag` wrote: the top digest, and each image's config and layers. */
export async function readPulledLayout(dir: string): Promise<PulledLayout> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
  const top = index.manifests[0]!.digest;
  const manifests: PulledLayout['manifests'] = [];
  const visit = async (digest: string): Promise<void> => {
    const body = await readFile(join(dir, 'blobs', 'sha256', digest.slice(7)));
    if (sha256hex(body) !== digest) throw new Error(`layout blob ${digest} does not match its digest`);
    const doc = JSON.parse(body.toString('utf8')) as { manifests?: Array<{ digest: string }>; config?: { digest: string }; layers?: Array<{ digest: string }> };
    if (doc.manifests) {
      for (const child of doc.manifests) await visit(child.digest);
      return;
    }
    const config = doc.config!.digest;
    const layers = doc.layers!.map((l) => l.digest);
    for (const blob of [config, ...layers]) {
      const data = await readFile(join(dir, 'blobs', 'sha256', blob.slice(7)));
      if (sha256hex(data) !== blob) throw new Error(`layout blob ${blob} does not match its digest`);
    }
    manifests.push({ digest, config, layers });
  };
  await visit(top);
  manifests.sort((a, b) => a.digest.localeCompare(b.digest));
  return { top, manifests };
}
