import { randomUUID } from 'node:crypto';
import { mkdir, open, readdir, realpath, rm, stat } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import * as tar from 'tar';
import { AirgapError } from './store-writer.js';
import { decompressZstdFile, nodeHasZstd } from './zstd.js';

/**
 * Inputs of `stevedore seed`: a directory, or a tar archive (plain, gzip; zstd where Node has it)
 * extracted into a temp dir of the store first, so its files can be verified and renamed into place
 * rather than copied. The npm `tar` package does the reading: it refuses absolute and `..` paths and
 * never writes through a symlink; readers below resolve every file inside the input root only.
 */

export type InputFormat = 'docker-archive' | 'oci-layout' | 'store' | 'registry-dir';

export interface SeedInput {
  /** The directory to read: the input itself, or where its archive was extracted. */
  dir: string;
  /** Whether `dir` is a temp dir of the store (files may be renamed into place; removed by cleanup). */
  extracted: boolean;
  format: InputFormat;
  cleanup(): Promise<void>;
}

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);
/** Entry types an image archive may hold; devices, FIFOs and the like are skipped. */
const ENTRY_TYPES = new Set(['File', 'OldFile', 'ContiguousFile', 'Directory', 'SymbolicLink', 'Link']);

async function readHead(path: string, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(length);
    const { bytesRead } = await handle.read(buffer, 0, length, 0);
    return buffer.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
}

function isTarHeader(head: Buffer): boolean {
  return head.length >= 512 && head.subarray(257, 262).toString('latin1') === 'ustar';
}

/** Extracts `file` into `dest` (which must exist). */
export async function extractArchive(file: string, dest: string): Promise<void> {
  const head = await readHead(file, 512);
  const options: tar.TarOptionsWithAliasesAsyncFile = {
    file,
    cwd: dest,
    strict: true,
    preserveOwner: false,
    noMtime: true,
    filter: (_path, entry) => ENTRY_TYPES.has((entry as tar.ReadEntry).type),
  };
  if (head.subarray(0, 4).equals(ZSTD_MAGIC)) {
    if (!nodeHasZstd()) {
      // Node < 22.15 has no zstd: decompress beside the extraction (same filesystem), then read the tar.
      const plain = join(dest, `.archive-${randomUUID()}.tar`);
      try {
        await decompressZstdFile(file, plain);
        return await extractArchive(plain, dest);
      } finally {
        await rm(plain, { force: true });
      }
    }
    options.zstd = true;
  } else if (!head.subarray(0, 2).equals(GZIP_MAGIC) && !isTarHeader(head)) {
    throw new AirgapError(`${file} is not a tar archive (plain or gzip-compressed) nor a directory`);
  }
  try {
    await tar.x(options);
  } catch (err) {
    throw new AirgapError(`cannot read the archive ${file}: ${(err as Error).message}`);
  }
}

async function isFile(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isFile(), () => false);
}

async function isDir(path: string): Promise<boolean> {
  return stat(path).then((s) => s.isDirectory(), () => false);
}

/** What a directory holds: docker-archive (manifest.json), OCI layout (index.json), a store (repositories/), else a registry directory. */
export async function detectFormat(dir: string): Promise<InputFormat> {
  if (await isFile(join(dir, 'manifest.json'))) return 'docker-archive';
  if (await isFile(join(dir, 'index.json'))) return 'oci-layout';
  if (await isDir(join(dir, 'repositories')) && await isDir(join(dir, 'blobs'))) return 'store';
  return 'registry-dir';
}

/**
 * Opens `from` for seeding: a directory as it is; an archive extracted into `<tmpParent>/seed-<uuid>`
 * (a temp dir of the store, so on its filesystem). cleanup() removes what was extracted.
 */
export async function openSeedInput(from: string, tmpParent: string): Promise<SeedInput> {
  const info = await stat(from).catch((err: NodeJS.ErrnoException) => {
    throw new AirgapError(`cannot read --from ${from}: ${err.code === 'ENOENT' ? 'no such file or directory' : err.message}`);
  });
  if (info.isDirectory()) {
    return { dir: resolve(from), extracted: false, format: await detectFormat(from), cleanup: async () => {} };
  }
  if (!info.isFile()) throw new AirgapError(`--from ${from} is neither a file nor a directory`);
  const dir = join(tmpParent, `seed-${randomUUID()}`);
  await mkdir(dir, { recursive: true });
  const cleanup = () => rm(dir, { recursive: true, force: true });
  try {
    await extractArchive(from, dir);
    return { dir, extracted: true, format: await detectFormat(dir), cleanup };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

/**
 * The real path of `relative` under `root` if it is a regular file inside root (symlinks resolved,
 * e.g. docker-archive layer links and registry-directory tag links), undefined if it does not exist.
 * A path that leads out of the input is refused.
 */
export async function fileInside(root: string, relative: string): Promise<string | undefined> {
  let real: string;
  try {
    real = await realpath(join(root, relative));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw err;
  }
  const realRoot = await realpath(root);
  if (!real.startsWith(realRoot + sep)) throw new AirgapError(`${relative} leads out of the input (to ${real}): refused`);
  const info = await stat(real);
  if (!info.isFile()) return undefined;
  return real;
}

/** Directory entries, or [] when the directory does not exist. */
export async function entriesOf(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw err;
  }
}
