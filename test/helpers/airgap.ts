import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { STEVEDORE_BIN, tempDir } from './processes.js';
import { hostOf, readPulledLayout, run, type CommandResult, type PulledLayout } from './proxy-fixtures.js';

/** Shared pieces of the air-gap end-to-end tests (test/airgap-*.test.ts). */

/** Runs a `stevedore` subcommand to completion; stderr carries its report. */
export async function stevedore(args: string[], timeoutMs = 60_000): Promise<CommandResult> {
  return run(process.execPath, [STEVEDORE_BIN, ...args], timeoutMs);
}

/** Starts a `stevedore` subcommand and leaves it running (to interrupt it). */
export function startStevedore(args: string[]): ChildProcess {
  return spawn(process.execPath, [STEVEDORE_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
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
