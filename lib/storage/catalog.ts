import { listAll, type StorageDriver } from './driver/driver.js';
import type { StorageLayout } from './layout.js';

/**
 * Every repository name in the store, sorted. A repository is a "directory" under the layout's
 * repositories prefix that has `_manifests` or `_layers`; other directories are namespaces on the
 * way down.
 *
 * On a directory, one readdir per directory (a delimiter listing). On S3 a listing request costs
 * ~50 ms whatever it returns, so the keys are listed flat instead: one request per 1,000 keys, not
 * one per directory (measured on Ceph RGW: a 6-repository catalog 0.5 s → one request).
 */
export async function listRepositories(driver: StorageDriver, layout: StorageLayout): Promise<string[]> {
  return driver.kind === 's3' ? listFlat(driver, layout.repositoriesPrefix) : listByDirectory(driver, layout.repositoriesPrefix);
}

async function listFlat(driver: StorageDriver, root: string): Promise<string[]> {
  const names = new Set<string>();
  for await (const info of driver.walk(root)) {
    const segments = info.key.slice(root.length).split('/');
    const inner = segments.findIndex((segment) => segment.startsWith('_') || segment.startsWith('.'));
    if (inner > 0 && (segments[inner] === '_manifests' || segments[inner] === '_layers')) names.add(segments.slice(0, inner).join('/'));
  }
  return [...names].sort();
}

async function listByDirectory(driver: StorageDriver, root: string): Promise<string[]> {
  const names: string[] = [];
  async function walk(prefix: string): Promise<void> {
    const dirs = (await listAll(driver, prefix)).prefixes;
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
