import type { StorageDriver } from './driver/driver.js';
import type { StorageLayout } from './layout.js';

/**
 * Every repository name in the store, sorted. A repository is a "directory" under the layout's
 * repositories prefix that has `_manifests` or `_layers`; other directories are namespaces on the
 * way down. One delimiter listing per directory (on S3: one LIST request per page).
 */
export async function listRepositories(driver: StorageDriver, layout: StorageLayout): Promise<string[]> {
  const root = layout.repositoriesPrefix;
  const names: string[] = [];
  async function walk(prefix: string): Promise<void> {
    const dirs: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await driver.list(prefix, { delimiter: '/', ...(cursor ? { cursor } : {}) });
      dirs.push(...page.prefixes);
      cursor = page.next;
    } while (cursor);
    const children = dirs.map((dir) => dir.slice(prefix.length, -1));
    if (prefix !== root && children.some((child) => child === '_manifests' || child === '_layers')) names.push(prefix.slice(root.length, -1));
    for (const child of children) {
      if (child.startsWith('_') || child.startsWith('.')) continue;
      await walk(`${prefix}${child}/`);
    }
  }
  await walk(root);
  return names.sort();
}
