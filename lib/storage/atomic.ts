import { randomUUID } from 'node:crypto';
import { mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/** A temp file path in `tmpDir`, which must be on the same filesystem as the destination. */
export function tempPath(tmpDir: string): string {
  return join(tmpDir, `${Date.now()}-${randomUUID()}`);
}

/**
 * Moves a complete, fsynced temp file into place. rename(2) is atomic: readers see the old file,
 * no file, or the whole new one, never a partial write.
 */
export async function commitFile(temp: string, destination: string): Promise<void> {
  try {
    await rename(temp, destination);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    await mkdir(dirname(destination), { recursive: true });
    await rename(temp, destination);
  }
}

/** Opens a new temp file for writing, creating `tmpDir` when it is missing. */
export async function openTempFile(temp: string): Promise<FileHandle> {
  return open(temp, 'w', 0o644).catch(async (err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
    await mkdir(dirname(temp), { recursive: true });
    return open(temp, 'w', 0o644);
  });
}

/** Writes `data` to a new fsynced temp file in `tmpDir` and returns its path (removed again on failure). */
export async function writeTempFile(tmpDir: string, data: string | Buffer): Promise<string> {
  const temp = tempPath(tmpDir);
  const handle = await openTempFile(temp);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await unlink(temp).catch(() => {});
    throw err;
  }
  await handle.close();
  return temp;
}

/** Writes small content (manifests, links, state) atomically: temp file, fsync, rename. */
export async function writeFileAtomic(tmpDir: string, destination: string, data: string | Buffer): Promise<void> {
  const temp = await writeTempFile(tmpDir, data);
  try {
    await commitFile(temp, destination);
  } catch (err) {
    await unlink(temp).catch(() => {});
    throw err;
  }
}

/** Removes entries of `dir` last modified more than `graceMs` ago; returns how many were removed. */
export async function removeStale(dir: string, graceMs: number, now = Date.now()): Promise<number> {
  let entries: string[];
  try {
    entries = await readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return 0;
    throw err;
  }
  let removed = 0;
  for (const entry of entries) {
    const path = join(dir, entry);
    const info = await stat(path).catch(() => undefined);
    if (!info || now - info.mtimeMs <= graceMs) continue;
    await rm(path, { recursive: true, force: true });
    removed++;
  }
  return removed;
}
