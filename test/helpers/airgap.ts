import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { chmod, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { STEVEDORE_BIN, tempDir } from './processes.js';
import { hostOf, readPulledLayout, run, type CommandResult, type PulledLayout } from './proxy-fixtures.js';
import type { TestStorage } from './storage-targets.js';

/** Shared pieces of the air-gap end-to-end tests (test/airgap-*.test.ts). */

/** Runs a `stevedore` subcommand to completion, with `env` added to this process's; stderr carries its report. */
export async function stevedore(args: string[], timeoutMs = 60_000, env: Record<string, string> = {}): Promise<CommandResult> {
  if (Object.keys(env).length === 0) return run(process.execPath, [STEVEDORE_BIN, ...args], timeoutMs);
  const started = Date.now();
  return new Promise((resolve) => {
    execFile(process.execPath, [STEVEDORE_BIN, ...args], { env: { ...process.env, ...env }, encoding: 'buffer', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr: `${stderr.toString('utf8')}${err?.killed ? ' (killed: timeout)' : ''}`, ms: Date.now() - started });
    });
  });
}

/** Starts a `stevedore` subcommand and leaves it running (to interrupt it). */
export function startStevedore(args: string[], env: Record<string, string> = {}): ChildProcess {
  return spawn(process.execPath, [STEVEDORE_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
}

// --- a test store of either kind (test/helpers/storage-targets.ts) as the --store of an air-gap command ---

/** `--store` naming the test store (a directory, or s3://bucket/prefix). */
export const storeArgs = (store: TestStorage): string[] => ['--store', store.storage];

/** What a child needs to reach the store: the AWS_* settings on S3 (not STEVEDORE_STORAGE, which would override --store). */
export function storeEnv(store: TestStorage): Record<string, string> {
  const { STEVEDORE_STORAGE: _, ...aws } = store.env;
  return aws;
}

/** A store's key of blob `digest` (sha256:...). */
export const blobKey = (digest: string): string => `blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`;

export async function hasKey(store: TestStorage, key: string): Promise<boolean> {
  return store.driver.stat(key).then(() => true, () => false);
}

/** Every key under `prefix`, sorted. */
export async function keysUnder(store: TestStorage, prefix: string): Promise<string[]> {
  const keys: string[] = [];
  for await (const info of store.driver.walk(prefix)) keys.push(info.key);
  return keys.sort();
}

/** The sha256 digest of the stored blob `digest`'s content, read back through the driver. */
export async function storedDigest(store: TestStorage, digest: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of await store.driver.reader(blobKey(digest))) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

/** Blob writes that were started and never committed (temp files, multipart uploads). */
export async function incompleteWrites(store: TestStorage): Promise<string[]> {
  const writes: string[] = [];
  for await (const write of store.driver.listIncompleteWrites()) writes.push(write.id);
  return writes;
}

/**
 * A directory a registry worker can serve with the store's content: the store itself on the
 * filesystem; for S3 (until the worker runs on the driver) `stevedore export` of it, seeded into a
 * fresh directory in `work` (removed with it), which also proves every exported blob verifies.
 */
export async function servableRoot(store: TestStorage, work: string): Promise<string> {
  if (store.kind === 'filesystem') return store.root;
  const archive = join(work, `export-${randomUUID()}.tar`);
  const exported = await stevedore(['export', ...storeArgs(store), '--out', archive], 60_000, storeEnv(store));
  if (exported.code !== 0) throw new Error(`export of ${store.storage} failed: ${exported.stderr}`);
  const root = join(work, `served-${randomUUID()}`);
  const seeded = await stevedore(['seed', '--from', archive, '--store', root]);
  await rm(archive, { force: true });
  if (seeded.code !== 0) throw new Error(`seeding the export of ${store.storage} failed: ${seeded.stderr}`);
  return root;
}

export const storeBlobPath = (root: string, digest: string): string => join(root, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

export async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}

/** `skopeo copy` of one platform (--override-arch) from a registry into a temp OCI layout; what it wrote. */
export async function pullArch(registry: string, ref: string, arch: string): Promise<CommandResult & { layout?: PulledLayout }> {
  const dir = await tempDir('airgap-pull-');
  try {
    const result = await run('skopeo', ['--override-arch', arch, '--override-os', 'linux', 'copy', '--quiet', '--src-tls-verify=false', '--retry-times', '0',
      `docker://${hostOf(registry)}/${ref}`, `oci:${dir}:pulled`]);
    if (result.code !== 0) return result;
    return { ...result, layout: await readPulledLayout(dir) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Flips one byte in the middle of a file (a corrupt blob of the same size). */
export async function corrupt(path: string): Promise<void> {
  const data = await readFile(path);
  data[data.length >> 1] ^= 0xff;
  await chmod(path, 0o644);
  await writeFile(path, data);
}
