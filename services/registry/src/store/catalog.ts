import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { StorageLayout } from '../../../../lib/storage/layout.js';

/**
 * Every repository name in the store, sorted. A repository is a directory under `repositories/`
 * that has `_manifests` or `_layers`; other directories are namespaces on the way down.
 */
export async function listRepositories(layout: StorageLayout): Promise<string[]> {
  const names: string[] = [];
  async function walk(dir: string, prefix: string): Promise<void> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    if (prefix && entries.some((e) => e.isDirectory() && (e.name === '_manifests' || e.name === '_layers'))) names.push(prefix);
    for (const entry of entries) {
      if (!entry.isDirectory() || entry.name.startsWith('_') || entry.name.startsWith('.')) continue;
      await walk(join(dir, entry.name), prefix ? `${prefix}/${entry.name}` : entry.name);
    }
  }
  await walk(layout.repositoriesDir, '');
  return names.sort();
}
