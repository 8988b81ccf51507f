import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { ACCESS_LOG_MESSAGE, type AccessLogEntry } from '../../lib/access-log.js';
import { writeOciLayout, type BuiltImage } from './oci-image.js';
import { STEVEDORE_BIN, tempDir } from './processes.js';

/** Shared pieces of the storage-control tests (logger, cleaner, gc) and the storage benchmark. */

const execFileP = promisify(execFile);

export const sha256 = (data: Buffer | string): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const hostOf = (url: string): string => new URL(url).host;
export { sleep } from './wait.js';

/** skopeo with TLS off for loopback registries; throws with skopeo's stderr when it fails. */
export async function skopeo(args: string[], timeoutMs = 60_000): Promise<string> {
  try {
    const { stdout } = await execFileP('skopeo', args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`skopeo ${args.join(' ')} failed: ${e.stderr ?? e.message}`);
  }
}

/** Pushes `image` from a fresh OCI layout to `registry` (a base URL) as `ref` (repo:tag). */
export async function pushImage(registry: string, ref: string, image: BuiltImage): Promise<void> {
  const dir = await tempDir('storage-seed-');
  try {
    await writeOciLayout(dir, 'seed', [image]);
    await skopeo(['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests', `oci:${dir}:seed`, `docker://${hostOf(registry)}/${ref}`]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * `skopeo copy docker://registry/ref oci:DIR` into a fresh temp dir; returns the pulled manifest
 * digest and its config and layer digests (each blob checked against its digest).
 */
export async function pullImage(registry: string, ref: string): Promise<{ manifest: string; blobs: string[] }> {
  const dir = await tempDir('storage-pull-');
  try {
    await skopeo(['copy', '--quiet', '--src-tls-verify=false', `docker://${hostOf(registry)}/${ref}`, `oci:${dir}:pulled`]);
    const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
    const manifest = index.manifests[0]!.digest;
    const body = await readFile(join(dir, 'blobs', 'sha256', manifest.slice(7)));
    if (sha256(body) !== manifest) throw new Error(`pulled manifest ${manifest} does not match its digest`);
    const doc = JSON.parse(body.toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
    const blobs = [doc.config.digest, ...doc.layers.map((l) => l.digest)];
    for (const blob of blobs) {
      if (sha256(await readFile(join(dir, 'blobs', 'sha256', blob.slice(7)))) !== blob) throw new Error(`pulled blob ${blob} does not match its digest`);
    }
    return { manifest, blobs };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every digest of an image: manifest, config, layers. */
export function imageDigests(image: BuiltImage): string[] {
  return [image.manifest.digest, image.config.digest, ...image.layers.map((l) => l.digest)];
}

export function imageSize(image: BuiltImage): number {
  return image.manifest.size + image.config.size + image.layers.reduce((sum, l) => sum + l.size, 0);
}

export function blobPathOf(root: string, digest: string): string {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return join(root, 'blobs', algorithm, hex.slice(0, 2), hex);
}

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/** Sets atime and mtime of a stored blob (seconds precision is enough for every check here). */
export async function setTimes(root: string, digest: string, atimeMs: number, mtimeMs: number = atimeMs): Promise<void> {
  await utimes(blobPathOf(root, digest), new Date(atimeMs), new Date(mtimeMs));
}

/** One access-log line as the gateway writes it (see lib/access-log.ts). */
export function accessLogLine(fields: Partial<AccessLogEntry> & { method?: string; upstream?: string }): string {
  const entry: AccessLogEntry = {
    level: 30, time: new Date().toISOString(), msg: ACCESS_LOG_MESSAGE, user: '-', method: 'GET', path: '/v2/', upstream: '-',
    status: 200, bytes: 0, durationMs: 1, ...fields,
  };
  if (entry.path === '/v2/' && entry.repository && entry.reference) {
    const prefix = entry.upstream === '-' ? '' : `${entry.upstream}/`;
    entry.path = `/v2/${prefix}${entry.repository}/${entry.kind === 'blob' ? 'blobs' : 'manifests'}/${entry.reference}`;
  }
  return JSON.stringify(entry);
}

/** Access-log lines of one image pull: the manifest by tag, then config and layers (GET, 200). */
export function pullLogLines(image: BuiltImage, options: { upstream: string; repository: string; tag: string; time: Date }): string[] {
  const base = { upstream: options.upstream, repository: options.repository, time: options.time.toISOString() };
  return [
    accessLogLine({ ...base, kind: 'manifest', reference: options.tag, bytes: image.manifest.size }),
    ...[image.config, ...image.layers].map((b) => accessLogLine({ ...base, kind: 'blob', reference: b.digest, bytes: b.size })),
  ];
}

export async function writeLines(path: string, lines: string[], flag: 'a' | 'w' = 'a'): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, lines.length === 0 ? '' : `${lines.join('\n')}\n`, { flag });
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `node bin/stevedore.js ...args` with extra environment variables; never throws on exit codes. */
export function runStevedore(args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 60_000): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const clean: NodeJS.ProcessEnv = { ...process.env };
    // The caller's environment must not leak cleaner settings into the child.
    for (const key of Object.keys(clean)) if (key.startsWith('CLEANER_') || key.startsWith('STEVEDORE_') || key.startsWith('LOGGER_')) delete clean[key];
    const proc = spawn(process.execPath, [STEVEDORE_BIN, ...args], { env: { ...clean, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    proc.stdout.on('data', (c: Buffer) => { stdout += c.toString('utf8'); });
    proc.stderr.on('data', (c: Buffer) => { stderr += c.toString('utf8'); });
    const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Requests made to a distribution instance, parsed from its access log lines. */
export function upstreamGets(output: string, repository: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const match of output.matchAll(/"GET \/v2\/([^ ]+)\/(blobs|manifests)\/([^ ?"]+)[^"]* HTTP\/[\d.]+" (\d{3})/g)) {
    if (match[1] !== repository) continue;
    counts.set(match[3]!, (counts.get(match[3]!) ?? 0) + 1);
  }
  return counts;
}

/** An image whose first layer is `base`'s first layer (shared, stored once) and the rest are `own`'s layers. */
export function deriveImage(base: BuiltImage, own: BuiltImage): BuiltImage {
  const baseConfig = JSON.parse(base.config.data.toString('utf8')) as { rootfs: { diff_ids: string[] } };
  const ownConfig = JSON.parse(own.config.data.toString('utf8')) as { rootfs: { diff_ids: string[] } };
  const configData = Buffer.from(JSON.stringify({ ...ownConfig, rootfs: { type: 'layers', diff_ids: [baseConfig.rootfs.diff_ids[0]!, ...ownConfig.rootfs.diff_ids] } }));
  const config = { digest: sha256(configData), size: configData.length, data: configData, mediaType: own.config.mediaType };
  const layers = [base.layers[0]!, ...own.layers];
  const manifestData = Buffer.from(JSON.stringify({
    schemaVersion: 2,
    mediaType: own.manifest.mediaType,
    config: { mediaType: config.mediaType, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }));
  return { manifest: { digest: sha256(manifestData), size: manifestData.length, data: manifestData, mediaType: own.manifest.mediaType }, config, layers, platform: own.platform };
}
