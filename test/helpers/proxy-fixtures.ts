import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir, rm, writeFile } from 'node:fs/promises';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import bcrypt from 'bcryptjs';
import { startThrottledRelay } from './faults.js';
import { buildIndex, MANIFEST_ACCEPT, readPulledLayout, writeOciLayout, type BuiltImage, type PulledLayout } from './oci-image.js';

export { MANIFEST_ACCEPT, readPulledLayout, type PulledLayout };
import { startStevedoreRegistry, tempDir, type RunningProcess } from './processes.js';
import type { TestStorage } from './storage-targets.js';
import { parseDigest } from '../../lib/oci/digest.js';
import { isStorageNotFound } from '../../lib/storage/driver/driver.js';
import { StorageLayout } from '../../lib/storage/layout.js';
import { sleep } from './wait.js';

/** Shared pieces of the pull-through cache end-to-end tests (test/proxy-*.test.ts). */

const execFileP = promisify(execFile);

export const sha256 = (data: Buffer | string): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
export const basicAuth = (user: string, pass: string): string => `Basic ${Buffer.from(`${user}:${pass}`).toString('base64')}`;
export { sleep };
/** `127.0.0.1:PORT` of a URL: how skopeo and auths files name a registry. */
export const hostOf = (url: string): string => new URL(url).host;

export interface CommandResult {
  code: number;
  stdout: Buffer;
  stderr: string;
  ms: number;
}

/** Runs a command; never throws on a non-zero exit (the result says how it went). */
export async function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<CommandResult> {
  const started = Date.now();
  try {
    const { stdout, stderr } = await execFileP(cmd, args, { encoding: 'buffer', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr: stderr.toString('utf8'), ms: Date.now() - started };
  } catch (err) {
    const e = err as { code?: number | string; stdout?: Buffer; stderr?: Buffer; killed?: boolean; message: string };
    return {
      code: typeof e.code === 'number' ? e.code : -1,
      stdout: e.stdout ?? Buffer.alloc(0),
      stderr: `${e.stderr?.toString('utf8') ?? ''}${e.killed ? ' (killed: timeout)' : ''}${typeof e.code === 'string' ? e.message : ''}`,
      ms: Date.now() - started,
    };
  }
}

/** skopeo with TLS off for loopback registries; throws with skopeo's stderr when it fails. */
export async function skopeo(args: string[], timeoutMs = 60_000): Promise<CommandResult> {
  const result = await run('skopeo', args, timeoutMs);
  if (result.code !== 0) throw new Error(`skopeo ${args.join(' ')} failed (${result.code}): ${result.stderr}`);
  return result;
}

/** Pushes an image (or index with `--all`) from a fresh OCI layout to `registry` (a base URL) as repo:tag. */
export async function seed(registry: string, ref: string, images: BuiltImage[], options: { index?: boolean; creds?: string } = {}): Promise<{ digest: string }> {
  const dir = await tempDir('proxy-seed-');
  const index = options.index ? buildIndex(images) : undefined;
  await writeOciLayout(dir, 'seed', images, index);
  const args = ['copy', '--quiet', '--dest-tls-verify=false', '--preserve-digests'];
  if (index) args.push('--all');
  if (options.creds) args.push('--dest-creds', options.creds);
  args.push(`oci:${dir}:seed`, `docker://${hostOf(registry)}/${ref}`);
  try {
    await skopeo(args);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return { digest: (index ?? images[0]!.manifest).digest };
}

/** `skopeo inspect --raw`: the manifest bytes a registry serves for `ref`, and their digest. */
export async function inspectRaw(registry: string, ref: string, creds?: string): Promise<{ digest: string; body: Buffer }> {
  const args = ['inspect', '--raw', '--tls-verify=false'];
  if (creds) args.push('--creds', creds);
  args.push(`docker://${hostOf(registry)}/${ref}`);
  const { stdout } = await skopeo(args);
  return { digest: sha256(stdout), body: stdout };
}

/** `skopeo copy docker://registry/ref oci:DIR:pulled` into a fresh temp dir; returns what was written. */
export async function pull(registry: string, ref: string, options: { all?: boolean; creds?: string; timeoutMs?: number } = {}): Promise<PulledLayout & { ms: number }> {
  const result = await tryPull(registry, ref, options);
  if (result.code !== 0) throw new Error(`skopeo pull of ${ref} from ${registry} failed (${result.code}): ${result.stderr}`);
  return result.layout!;
}

/** Like pull, but reports a failure instead of throwing. */
export async function tryPull(registry: string, ref: string, options: { all?: boolean; creds?: string; timeoutMs?: number } = {}): Promise<CommandResult & { layout?: PulledLayout & { ms: number } }> {
  const dir = await tempDir('proxy-pull-');
  try {
    // A single-platform pull picks linux/amd64 from an index, whatever machine runs the test.
    const args = ['--override-os', 'linux', '--override-arch', 'amd64', 'copy', '--quiet', '--src-tls-verify=false', '--retry-times', '0'];
    if (options.all) args.push('--all');
    if (options.creds) args.push('--src-creds', options.creds);
    args.push(`docker://${hostOf(registry)}/${ref}`, `oci:${dir}:pulled`);
    const result = await run('skopeo', args, options.timeoutMs ?? 60_000);
    if (result.code !== 0) return result;
    return { ...result, layout: { ...(await readPulledLayout(dir)), ms: result.ms } };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
  userAgent: string;
}

/** Requests in a distribution access log (combined format), with their user agent. */
export function accessLog(output: string): AccessLogEntry[] {
  const result: AccessLogEntry[] = [];
  for (const m of output.matchAll(/"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP\/[\d.]+" (\d{3}) \S+ "[^"]*" "([^"]*)"/g)) {
    result.push({ method: m[1]!, path: m[2]!, status: Number(m[3]), userAgent: m[4]! });
  }
  return result;
}

/** Requests the cache made (user agent `stevedore`): skopeo's direct requests to the upstream are left out. */
export const cacheRequests = (output: string): AccessLogEntry[] => accessLog(output).filter((r) => r.userAgent === 'stevedore');

/** How many times the cache requested each path under `pathPrefix` with `method` (and status, if given). */
export function requestCounts(output: string, method: string, pathPrefix: string, status?: number): Map<string, number> {
  const counts = new Map<string, number>();
  for (const r of cacheRequests(output)) {
    if (r.method !== method || !r.path.startsWith(pathPrefix)) continue;
    if (status !== undefined && r.status !== status) continue;
    const key = r.path.slice(pathPrefix.length).split('?')[0]!;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return counts;
}

export const blobGets = (output: string, repo: string): Map<string, number> => requestCounts(output, 'GET', `/v2/${repo}/blobs/`);
export const manifestGets = (output: string, repo: string): Map<string, number> => requestCounts(output, 'GET', `/v2/${repo}/manifests/`);
export const total = (counts: Map<string, number>): number => [...counts.values()].reduce((a, b) => a + b, 0);

/** An htpasswd file (bcrypt, as distribution requires) with one user. */
export async function writeHtpasswd(dir: string, user: string, pass: string): Promise<string> {
  const path = join(dir, 'htpasswd');
  await writeFile(path, `${user}:${bcrypt.hashSync(pass, 5)}\n`);
  return path;
}

/** A docker `auths` file with one entry under `key`; `auth` omitted when no credentials. */
export async function writeAuths(dir: string, key: string, creds?: { user: string; pass: string }, file = 'pull-secret.json'): Promise<string> {
  const path = join(dir, file);
  const entry = creds ? { auth: Buffer.from(`${creds.user}:${creds.pass}`).toString('base64') } : {};
  await writeFile(path, JSON.stringify({ auths: { [key]: entry } }));
  return path;
}

/** The OCI error body of a failed response: its first error's code and message. */
export async function ociError(res: Response): Promise<{ code: string; message: string; detail?: unknown }> {
  const text = await res.text();
  let body: { errors?: Array<{ code: string; message: string; detail?: unknown }> };
  try {
    body = JSON.parse(text) as typeof body;
  } catch {
    throw new Error(`expected an OCI error body, got ${res.status}: ${text.slice(0, 300)}`);
  }
  const first = body.errors?.[0];
  if (!first) throw new Error(`expected an OCI error body, got ${res.status}: ${text.slice(0, 300)}`);
  return first;
}

/** Where the cache stores a blob's bytes (lib/storage/layout.ts): `<root>/blobs/sha256/<2>/<hex>`. */
export const cacheBlobPath = (root: string, digest: string): string => join(root, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
/** The store key of a blob (lib/storage/layout.ts): `blobs/sha256/<2>/<hex>`, on either driver. */
export const blobKey = (digest: string): string => new StorageLayout('/').blobKey(parseDigest(digest));

/** The size of a blob in the test's store, or undefined when it is not there. */
export async function storedBlobSize(storage: TestStorage, digest: string): Promise<number | undefined> {
  try {
    return (await storage.driver.stat(blobKey(digest))).size;
  } catch (err) {
    if (isStorageNotFound(err)) return undefined;
    throw err;
  }
}

export const isStored = async (storage: TestStorage, digest: string): Promise<boolean> => (await storedBlobSize(storage, digest)) !== undefined;

/** Waits (up to `ms`) until the blob is in the store; whether it is. */
export async function waitStored(storage: TestStorage, digest: string, ms = 5000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!(await isStored(storage, digest))) {
    if (Date.now() > deadline) return false;
    await sleep(50);
  }
  return true;
}

/** A blob's bytes as the test's store holds them. */
export const readStoredBlob = (storage: TestStorage, digest: string): Promise<Buffer> => storage.driver.getContent(blobKey(digest));

/**
 * What unfinished cache fills left: the store's incomplete writes (filesystem: temp files of its
 * driver; S3: multipart uploads), and local spool or temp files under --root's `_tmp/<worker>/`.
 */
export async function fillLeftovers(storage: TestStorage): Promise<string[]> {
  const left: string[] = [];
  for await (const write of storage.driver.listIncompleteWrites()) left.push(`incomplete write ${write.key ?? write.id}`);
  for (const dir of await readdir(join(storage.root, '_tmp')).catch(() => [] as string[])) {
    if (dir === '_storage') continue; // the filesystem driver's temp dir: listed above
    for (const file of await readdir(join(storage.root, '_tmp', dir)).catch(() => [] as string[])) left.push(`_tmp/${dir}/${file}`);
  }
  return left;
}

/** Every blob key in the store that does not hash to its name: [] when nothing partial or corrupt is visible. */
export async function corruptStoredBlobs(storage: TestStorage): Promise<{ checked: number; corrupt: string[] }> {
  const corrupt: string[] = [];
  let checked = 0;
  for await (const info of storage.driver.walk('blobs/sha256/')) {
    const hash = createHash('sha256');
    for await (const chunk of await storage.driver.reader(info.key)) hash.update(chunk as Buffer);
    checked++;
    const name = info.key.split('/').pop()!;
    if (hash.digest('hex') !== name) corrupt.push(info.key);
  }
  return { checked, corrupt };
}

/** A cache worker of `upstream` on the test's store (`--root` local, `--storage` for S3). */
export function startCacheOn(storage: TestStorage, upstream: string, extra: string[] = []): Promise<RunningProcess> {
  return startStevedoreRegistry(['--root', storage.root, ...storage.args, '--upstream', upstream, ...extra], storage.env);
}

/** Where distribution 2.8's filesystem driver stores a blob. */
export const distributionBlobPath = (root: string, digest: string): string =>
  join(root, 'docker', 'registry', 'v2', 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7), 'data');

/** Pushes a blob to a registry (POST, then PUT with the digest). */
export async function pushBlob(registry: string, repo: string, data: Buffer, auth?: string): Promise<string> {
  const digest = sha256(data);
  const headers: Record<string, string> = auth ? { authorization: auth } : {};
  const post = await fetch(`${registry}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers });
  await post.arrayBuffer();
  if (post.status !== 202) throw new Error(`POST upload answered ${post.status}`);
  const location = new URL(post.headers.get('location')!, registry);
  location.searchParams.set('digest', digest);
  const put = await fetch(location, { method: 'PUT', headers: { ...headers, 'content-type': 'application/octet-stream' }, body: data });
  const text = await put.text();
  if (put.status !== 201) throw new Error(`PUT upload answered ${put.status}: ${text}`);
  return digest;
}

/** PUTs manifest bytes to repo:ref; returns the registry's Docker-Content-Digest. */
export async function pushManifest(registry: string, repo: string, ref: string, body: Buffer, mediaType: string, auth?: string): Promise<string> {
  const headers: Record<string, string> = { 'content-type': mediaType };
  if (auth) headers.authorization = auth;
  const res = await fetch(`${registry}/v2/${repo}/manifests/${ref}`, { method: 'PUT', headers, body });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`PUT manifest ${repo}:${ref} answered ${res.status}: ${text}`);
  return res.headers.get('docker-content-digest')!;
}

/** HEAD (or GET) of a manifest through a registry: status and Docker-Content-Digest. */
export async function manifestDigest(registry: string, repo: string, ref: string, method: 'HEAD' | 'GET' = 'HEAD'): Promise<{ status: number; digest: string | null; body: Buffer }> {
  const res = await fetch(`${registry}/v2/${repo}/manifests/${ref}`, { method, headers: { accept: MANIFEST_ACCEPT } });
  const body = Buffer.from(await res.arrayBuffer());
  return { status: res.status, digest: res.headers.get('docker-content-digest'), body };
}

/**
 * A TCP relay to a real upstream that forwards the upstream's answers at `bytesPerSecond` (requests
 * pass at full speed): a slow link, so a cache fill stays in flight long enough to join it.
 */
export const startSlowRelay = startThrottledRelay;

/**
 * GETs `url`, and once the response headers are in, closes the connection: a client that goes away
 * mid-transfer. (Aborting fetch() is not the same: undici may keep the socket open, so the server
 * never learns that the client left.)
 */
export function getAndHangUp(url: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined> }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, (res) => {
      resolve({ status: res.statusCode ?? 0, headers: res.headers });
      req.destroy();
    });
    req.on('error', (err) => { if (!req.destroyed) reject(err); });
    req.end();
  });
}
